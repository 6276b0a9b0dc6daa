//! The example app on a free loopback port, shared by the app's HTTP tests
//! and its browser test (each includes the app's `routes` module).

use std::net::SocketAddr;

use super::routes;

/// The app on `backend`, served on a free loopback port for as long as
/// the test runs.
pub async fn serve(backend: redis_layers::Backend) -> SocketAddr {
    serve_with(backend, false).await
}

/// [`serve`], with the session cookie `Secure` (as behind https) when
/// `secure`.
pub async fn serve_with(backend: redis_layers::Backend, secure: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The test client's host, and the browser's.
    let hosts = [
        "shop.test".to_owned(),
        addr.to_string(),
        format!("localhost:{}", addr.port()),
    ];
    let app = routes::router(backend, secure, &hosts).expect("the app's router");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}
