//! TLS and ACL to Redis: a `redis-server` with `--tls-port` and
//! certificates made at test time (rcgen: nothing checked in that could
//! expire), mutual TLS, users and passwords, and the errors a wrong
//! setting gives. Each layer's smoke flow runs over TLS.
#![cfg(feature = "tls")]

mod support;

use std::time::{Duration, Instant};

use redis_layers::redis::{RedisBackend, Tls};
use redis_layers::ErrorKind;

use support::pki::{tls_server, Pki};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn backend(url: &str, tls: Option<Tls>) -> Result<RedisBackend, redis_layers::Error> {
    let mut b = RedisBackend::builder()
        .url(url)
        .prefix(support::unique_prefix("tls"))
        .deadline(Duration::from_secs(2));
    if let Some(tls) = tls {
        b = b.tls(tls);
    }
    b.build()
}

#[tokio::test]
async fn every_layer_works_over_tls_with_a_private_ca() {
    let pki = Pki::new();
    let port = free_port();
    let _server = tls_server(&pki, port, false, &[]);
    let backend = backend(
        &format!("rediss://127.0.0.1:{port}"),
        Some(Tls::new().root_certificates_pem(pki.ca.as_bytes())),
    )
    .unwrap();
    backend.ping().await.unwrap();
    support::smoke::smoke(backend.into()).await;
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let port = free_port();
    let _server = tls_server(&pki, port, true, &[]);
    let url = format!("rediss://localhost:{port}");
    let without = backend(
        &url,
        Some(Tls::new().root_certificates_pem(pki.ca.as_bytes())),
    )
    .unwrap();
    let err = without.ping().await.unwrap_err();
    eprintln!("without a client certificate: {err}");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("client certificate"), "{err}");
    let with = backend(
        &url,
        Some(
            Tls::new()
                .root_certificates_pem(pki.ca.as_bytes())
                .client_certificate_pem(pki.client_cert.as_bytes(), pki.client_key.as_bytes()),
        ),
    )
    .unwrap();
    with.ping().await.unwrap();
    support::smoke::smoke(with.into()).await;
}

#[tokio::test]
async fn an_untrusted_certificate_fails_within_the_deadline_and_says_so() {
    let pki = Pki::new();
    let port = free_port();
    let _server = tls_server(&pki, port, false, &[]);
    // The system's trust store does not know the test CA.
    let backend = backend(&format!("rediss://127.0.0.1:{port}"), None).unwrap();
    let started = Instant::now();
    let err = backend.ping().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    eprintln!("an untrusted certificate: {err}");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(
        err.to_string().contains("certificate"),
        "names the cause: {err}"
    );
}

#[tokio::test]
async fn a_tls_url_for_a_plaintext_port_fails_within_the_deadline() {
    let pki = Pki::new();
    let server = tls_server(&pki, free_port(), false, &[]);
    let backend = backend(
        &format!("rediss://127.0.0.1:{}", server.port()),
        Some(Tls::new().root_certificates_pem(pki.ca.as_bytes())),
    )
    .unwrap();
    let started = Instant::now();
    let err = backend.ping().await.unwrap_err();
    eprintln!("rediss:// on a plaintext port: {err}");
    assert!(err.to_string().contains("TLS port"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );
    // And the other way: a plaintext URL for the TLS port.
    let port = free_port();
    let _tls_only = tls_server(&pki, port, false, &[]);
    let plain = backend_plain(&format!("redis://127.0.0.1:{port}"));
    let started = Instant::now();
    let err = plain.ping().await.unwrap_err();
    eprintln!("redis:// on a TLS port: {err}");
    assert!(err.to_string().contains("rediss://"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A Redis reached by an address its certificate does not name (an IP,
/// a tunnel): refused, unless the TLS settings name the server the
/// certificate names; then every layer works with the password and
/// database of the URL, and so does the cache's subscription (a local
/// tier serves only while subscribed). A wrong name is refused too.
#[tokio::test]
async fn a_server_name_of_its_own_verifies_a_certificate_for_another_host() {
    const NAME: &str = "redis.internal.test";
    let pki = Pki::for_names(&[NAME]);
    let port = free_port();
    let server = tls_server(&pki, port, false, &["--requirepass", "pw"]);
    let url = format!("rediss://:pw@127.0.0.1:{port}/3");
    let ca = || Tls::new().root_certificates_pem(pki.ca.as_bytes());

    let unnamed = backend(&url, Some(ca())).unwrap();
    let err = unnamed.ping().await.unwrap_err();
    assert!(
        err.to_string().contains("Tls::server_name"),
        "says what to do: {err}"
    );
    let wrong = backend(&url, Some(ca().server_name("other.test"))).unwrap();
    let err = wrong.ping().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");

    let named = backend(&url, Some(ca().server_name(NAME))).unwrap();
    named.ping().await.unwrap();
    assert!(
        named.pool().is_none(),
        "bb8-redis's manager cannot take the name"
    );
    support::smoke::smoke(named.clone().into()).await;
    // In the URL's database.
    let keys: Vec<String> = {
        let mut c = server.admin();
        redis::cmd("AUTH").arg("pw").query::<()>(&mut c).unwrap();
        redis::cmd("SELECT").arg(3).query::<()>(&mut c).unwrap();
        redis::cmd("KEYS").arg("*").query(&mut c).unwrap()
    };
    assert!(!keys.is_empty(), "the layers wrote to database 3");

    // The cache's subscription connects the same way.
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/p",
            get(|| async { ([("cache-control", "public, max-age=60")], "p") }),
        )
        .layer(
            redis_layers::cache::CacheLayer::builder(named)
                .local_tier(10)
                .build()
                .unwrap(),
        );
    let mut local = false;
    for _ in 0..200 {
        let res = tower::ServiceExt::oneshot(
            app.clone(),
            http::Request::get("/p")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap();
        if status.contains("detail=local") {
            local = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(local, "the local tier never served: no subscription");

    // Mutual TLS through the same path: the client certificate is sent.
    let port = free_port();
    let _mutual = tls_server(&pki, port, true, &[]);
    let url = format!("rediss://127.0.0.1:{port}");
    let without = backend(&url, Some(ca().server_name(NAME))).unwrap();
    let err = without.ping().await.unwrap_err();
    assert!(err.to_string().contains("client certificate"), "{err}");
    let with = backend(
        &url,
        Some(
            ca().server_name(NAME)
                .client_certificate_pem(pki.client_cert.as_bytes(), pki.client_key.as_bytes()),
        ),
    )
    .unwrap();
    with.ping().await.unwrap();
}

fn backend_plain(url: &str) -> RedisBackend {
    backend(url, None).unwrap()
}

#[tokio::test]
async fn bad_tls_settings_are_refused_at_build() {
    let tls = || Tls::new().root_certificates_pem(b"not a certificate".to_vec());
    let err = backend("rediss://127.0.0.1:6380", Some(tls())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    // TLS settings for a plaintext URL: a mistake, said at once.
    let pki = Pki::new();
    let ok = Tls::new().root_certificates_pem(pki.ca.as_bytes());
    let err = backend("redis://127.0.0.1:6379", Some(ok)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("rediss://"), "{err}");
    // A server name that is none, or for a topology redis-rs connects.
    let named = |name: &str| {
        Tls::new()
            .root_certificates_pem(pki.ca.as_bytes())
            .server_name(name)
    };
    let err = backend("rediss://127.0.0.1:6380", Some(named("not a name!"))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    #[cfg(feature = "cluster")]
    {
        let err = RedisBackend::builder()
            .cluster(["rediss://127.0.0.1:7000"])
            .tls(named("redis.test"))
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("standalone"), "{err}");
    }
}

/// An ACL user with a password, over TLS and not: the right one works,
/// a wrong one fails at the first call naming the cause, and the password
/// shows in no `Debug`, `Display` or error.
#[tokio::test]
async fn acl_users_and_passwords_work_and_never_show() {
    const SECRET: &str = "s3cret-Pa55word";
    const WRONG: &str = "not-the-Pa55word";
    let pki = Pki::new();
    let tls_port = free_port();
    let server = tls_server(&pki, tls_port, false, &[]);
    let _: String = server.cmd(&[
        "ACL",
        "SETUSER",
        "app",
        "on",
        &format!(">{SECRET}"),
        "~*",
        "&*",
        "+@all",
    ]);
    let ca = || Some(Tls::new().root_certificates_pem(pki.ca.as_bytes()));
    for (url, tls) in [
        (
            format!("redis://app:{SECRET}@127.0.0.1:{}", server.port()),
            None,
        ),
        (format!("rediss://app:{SECRET}@127.0.0.1:{tls_port}"), ca()),
    ] {
        let good = backend(&url, tls.clone()).unwrap();
        good.ping().await.unwrap();
        assert!(!format!("{good:?}").contains(SECRET));
        let wrong_url = url.replace(SECRET, WRONG);
        let builder = RedisBackend::builder().url(&wrong_url);
        assert!(!format!("{builder:?}").contains(WRONG));
        let wrong = backend(&wrong_url, tls).unwrap();
        let started = Instant::now();
        let err = wrong.ping().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        let shown = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
        assert!(
            shown.contains("user and password"),
            "names the cause: {shown}"
        );
        assert!(!shown.contains(WRONG) && !shown.contains(SECRET), "{shown}");
    }
    // A URL that does not parse is not repeated in the error.
    let err = backend(&format!("redis://app:{SECRET}@[bad"), None).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(SECRET), "{err:?}");
}

/// A three-primary Cluster whose nodes speak TLS to clients and to each
/// other (`tls-cluster yes`: they announce their TLS ports), reached
/// through `rediss://` seed nodes: every layer works.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_works_on_a_cluster_over_tls() {
    let pki = Pki::new();
    let cluster = support::RedisCluster::start_from(3, || {
        tls_server(
            &pki,
            free_port(),
            false,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
                "--tls-cluster",
                "yes",
            ],
        )
    });
    let slots: redis::Value = cluster.nodes[0].cmd(&["CLUSTER", "SLOTS"]);
    let seeds: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| {
            let tls_port: Vec<String> = n.cmd(&["CONFIG", "GET", "tls-port"]);
            format!("rediss://127.0.0.1:{}", tls_port[1])
        })
        .collect();
    let backend = RedisBackend::builder()
        .cluster(seeds)
        .tls(Tls::new().root_certificates_pem(pki.ca.as_bytes()))
        .prefix(support::unique_prefix("tls-cluster"))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    backend
        .ping()
        .await
        .unwrap_or_else(|e| panic!("{e}; slots {slots:?}"));
    support::smoke::smoke(backend.into()).await;
}

/// Behind Sentinel, TLS settings for a primary reached in plaintext would
/// be ignored: refused at build instead.
#[cfg(feature = "sentinel")]
#[tokio::test]
async fn tls_settings_behind_sentinel_need_a_tls_primary() {
    use redis_layers::redis::SentinelPrimary;
    let pki = Pki::new();
    let tls = || Tls::new().root_certificates_pem(pki.ca.as_bytes());
    let err = RedisBackend::builder()
        .sentinel(["redis://127.0.0.1:26379"], "mymaster")
        .sentinel_primary(SentinelPrimary::new().password("p"))
        .tls(tls())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("SentinelPrimary::tls"), "{err}");
    RedisBackend::builder()
        .sentinel(["redis://127.0.0.1:26379"], "mymaster")
        .sentinel_primary(SentinelPrimary::new().password("p").tls(true))
        .tls(tls())
        .build()
        .expect("a TLS primary takes the settings");
}
