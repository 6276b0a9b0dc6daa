//! Test app, fixture (backend + counting store) and a one-cookie client.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use redis_layers::session::store::{
    DeleteOutcome, DeleteRequest, LoadOutcome, LoadRequest, SaveOutcome, SaveRequest, SessionStore,
};
use redis_layers::session::{
    Session, SessionError, SessionHandle, SessionInfo, SessionLayer, SessionLayerBuilder,
};
use redis_layers::{Backend, Error};

pub use crate::support::Kind;
use crate::support::{RedisServer, TestBackend};

/// Counts every store call: the round-trip contract, checked on both backends.
#[derive(Clone)]
pub struct Counting {
    inner: Backend,
    calls: Arc<AtomicUsize>,
    /// When set, `delete` fails as if the store were down.
    fail_deletes: Arc<std::sync::atomic::AtomicBool>,
}

impl Counting {
    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl SessionStore for Counting {
    fn load(
        &self,
        h: &SessionHandle,
        r: &LoadRequest,
    ) -> impl Future<Output = Result<LoadOutcome, Error>> + Send {
        self.hit();
        self.inner.load(h, r)
    }
    fn save(
        &self,
        h: &SessionHandle,
        r: &SaveRequest,
    ) -> impl Future<Output = Result<SaveOutcome, Error>> + Send {
        self.hit();
        self.inner.save(h, r)
    }
    fn delete(
        &self,
        h: &SessionHandle,
        r: &DeleteRequest,
    ) -> impl Future<Output = Result<DeleteOutcome, Error>> + Send {
        self.hit();
        let fail = self.fail_deletes.load(Ordering::SeqCst);
        let inner = SessionStore::delete(&self.inner, h, r);
        async move {
            if fail {
                return Err(Error::new(
                    redis_layers::ErrorKind::Connection,
                    "injected failure",
                ));
            }
            inner.await
        }
    }
    fn index_add(
        &self,
        u: &str,
        h: &SessionHandle,
        d: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.hit();
        self.inner.index_add(u, h, d)
    }
    fn index_remove(
        &self,
        u: &str,
        h: &SessionHandle,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.hit();
        self.inner.index_remove(u, h)
    }
    fn list(&self, u: &str) -> impl Future<Output = Result<Vec<SessionInfo>, Error>> + Send {
        self.hit();
        self.inner.list(u)
    }
}

pub struct Fixture {
    pub test: TestBackend,
    calls: Arc<AtomicUsize>,
    pub fail_deletes: Arc<std::sync::atomic::AtomicBool>,
}

impl Fixture {
    pub fn new(kind: Kind) -> Self {
        Self::with_deadline(kind, Duration::from_secs(2))
    }

    pub fn with_deadline(kind: Kind, deadline: Duration) -> Self {
        Self::on(TestBackend::with_deadline(kind, deadline))
    }

    pub fn on(test: TestBackend) -> Self {
        Fixture {
            test,
            calls: Arc::default(),
            fail_deletes: Arc::default(),
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.test.backend
    }

    pub fn server(&self) -> &RedisServer {
        self.test.server()
    }

    pub fn server_mut(&mut self) -> &mut RedisServer {
        self.test.server.as_mut().expect("a Redis test")
    }

    /// The counting store every layer of this fixture shares.
    pub fn store(&self) -> Counting {
        Counting {
            inner: self.test.backend.clone(),
            calls: self.calls.clone(),
            fail_deletes: self.fail_deletes.clone(),
        }
    }

    /// A new layer (a new "instance" of the service) on this fixture's store.
    pub fn layer(
        &self,
        configure: impl FnOnce(SessionLayerBuilder) -> SessionLayerBuilder,
    ) -> SessionLayer {
        configure(SessionLayer::builder(self.store()).secure(true))
            .build()
            .expect("valid session settings")
    }

    pub fn app(
        &self,
        configure: impl FnOnce(SessionLayerBuilder) -> SessionLayerBuilder,
    ) -> Router {
        routes().layer(self.layer(configure))
    }

    /// The app on the bare backend (no counting wrapper): the path users
    /// take, where the layer calls this crate's backend directly.
    pub fn bare_app(
        &self,
        configure: impl FnOnce(SessionLayerBuilder) -> SessionLayerBuilder,
    ) -> Router {
        let layer = configure(SessionLayer::builder(self.test.backend.clone()).secure(true))
            .build()
            .expect("valid session settings");
        routes().layer(layer)
    }

    pub fn store_calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Live session records in the store (not counting the short-lived
    /// `R1` markers a renewal leaves under the old id).
    pub fn session_count(&self) -> usize {
        self.test
            .keys("session:*")
            .iter()
            .filter(|key| {
                let value: Vec<u8> = match self.backend() {
                    Backend::Redis(_) => self.test.key_cmd(key, &["GET", key]),
                    Backend::Memory(memory) => memory.atomically(|ks| match ks.get(key) {
                        Some(redis_layers::memory::Value::Bytes(b)) => b.clone(),
                        _ => Vec::new(),
                    }),
                    _ => unreachable!(),
                };
                value.starts_with(b"S1")
            })
            .count()
    }

    /// Entries in a user's session index.
    pub fn index_len(&self, user: &str) -> usize {
        let key = user_index_key(self.backend(), user);
        match self.backend() {
            Backend::Redis(_) => self.test.key_cmd::<usize>(&key, &["ZCARD", &key]),
            Backend::Memory(memory) => memory.atomically(|ks| match ks.get(&key) {
                Some(redis_layers::memory::Value::Hash(h)) => h.len(),
                _ => 0,
            }),
            _ => unreachable!(),
        }
    }

    /// The bare session id inside a (possibly signed) `id=...` cookie.
    pub fn first_session_id(&self, cookie: &str) -> String {
        let value = cookie.trim_start_matches("id=");
        value[value.len() - 32..].to_owned()
    }
}

/// The storage layout, as these tests pin it: a user's index lives under
/// `{prefix}:session-user:{<user>}`.
pub fn user_index_key(backend: &Backend, user: &str) -> String {
    backend.namespace().tagged("session-user", user).into_base()
}

fn routes() -> Router {
    Router::new()
        .route("/untouched", get(|| async { "ok" }))
        .route("/get/{key}", get(get_value))
        .route("/get-cached/{key}", get(get_value_cached))
        .route("/set/{key}/{value}", post(set_value))
        .route("/slow-set/{key}/{value}", post(slow_set))
        .route("/fail/{key}/{value}", post(fail_after_set))
        .route("/incr/{key}", post(incr))
        .route("/remove/{key}", post(remove))
        .route("/clear", post(clear))
        .route("/login/{user}", post(login))
        .route("/slow-login/{user}", post(slow_login))
        .route("/late-logout", post(late_logout))
        .route("/late-insert", post(late_insert))
        .route("/logout", post(logout))
        .route("/user", get(user))
        .route("/sessions", get(sessions))
        .route("/revoke/{handle}", post(revoke))
        .route("/revoke-others", post(revoke_others))
}

async fn get_value(session: Session, Path(key): Path<String>) -> Result<String, SessionError> {
    Ok(match session.get::<serde_json::Value>(&key).await? {
        Some(v) => v.to_string(),
        None => "none".to_owned(),
    })
}

/// Reads the session but chooses its own Cache-Control.
async fn get_value_cached(
    session: Session,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, SessionError> {
    let body = get_value(session, Path(key)).await?;
    Ok(([(header::CACHE_CONTROL, "no-cache")], body))
}

async fn set_value(
    session: Session,
    Path((key, value)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    let value: serde_json::Value =
        serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
    session.insert(&key, value)?;
    Ok("ok")
}

async fn slow_set(
    session: Session,
    Path((key, value)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    session.insert(&key, value)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok("ok")
}

async fn fail_after_set(
    session: Session,
    Path((key, value)): Path<(String, String)>,
) -> impl IntoResponse {
    let _ = session.insert(&key, value);
    (StatusCode::INTERNAL_SERVER_ERROR, "handler failed")
}

async fn incr(session: Session, Path(key): Path<String>) -> Result<String, SessionError> {
    let n: i64 = session.get(&key).await?.unwrap_or(0) + 1;
    session.insert(&key, n)?;
    Ok(n.to_string())
}

async fn remove(session: Session, Path(key): Path<String>) -> &'static str {
    session.remove(&key);
    "ok"
}

async fn clear(session: Session) -> &'static str {
    session.clear();
    "ok"
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.cycle_id().await?;
    session.set_user(user)?;
    Ok("ok")
}

/// A login that reads the session, then waits before the response goes out.
async fn slow_login(
    session: Session,
    Path(user): Path<String>,
) -> Result<&'static str, SessionError> {
    session.cycle_id().await?;
    session.set_user(user)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok("ok")
}

/// Saves a change, and logs out from a task that outlives the response.
async fn late_logout(session: Session) -> Result<&'static str, SessionError> {
    session.insert("late", 1)?;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = session.destroy().await.is_ok();
        LATE_RESULTS.lock().unwrap().push(done);
    });
    Ok("ok")
}

/// Changes the session from a task that outlives the response.
async fn late_insert(session: Session) -> &'static str {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = matches!(session.insert("late", 2), Err(SessionError::ResponseSent));
        LATE_RESULTS.lock().unwrap().push(refused);
    });
    "ok"
}

/// What the late tasks above saw, in order.
pub static LATE_RESULTS: std::sync::Mutex<Vec<bool>> = std::sync::Mutex::new(Vec::new());

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("ok")
}

async fn user(session: Session) -> Result<String, SessionError> {
    Ok(session.user().await?.unwrap_or_else(|| "none".to_owned()))
}

async fn sessions(session: Session) -> Result<String, SessionError> {
    let list = session.sessions().await?;
    let json: Vec<serde_json::Value> = list
        .iter()
        .map(|s| {
            serde_json::json!({
                "handle": s.handle.as_str(),
                "user_agent": s.user_agent,
                "current": s.current,
                "created": s.created.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
                "last_seen": s.last_seen.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
            })
        })
        .collect();
    Ok(serde_json::Value::Array(json).to_string())
}

async fn revoke(session: Session, Path(handle): Path<String>) -> Result<String, SessionError> {
    Ok(session.revoke(&handle).await?.to_string())
}

async fn revoke_others(session: Session) -> Result<String, SessionError> {
    Ok(session.revoke_others().await?.to_string())
}

pub use crate::support::reply::Reply;

/// Sends one request with a raw `Cookie` header value.
pub async fn send_raw(app: &Router, method: &str, path: &str, cookie: Option<&[u8]>) -> Reply {
    send(app, method, path, cookie, None).await
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    cookie: Option<&[u8]>,
    agent: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        req = req.header(
            header::COOKIE,
            http::HeaderValue::from_bytes(cookie).unwrap(),
        );
    }
    if let Some(agent) = agent {
        req = req.header(header::USER_AGENT, agent);
    }
    crate::support::reply::send(app, req.body(Body::empty()).unwrap()).await
}

/// A browser with one cookie.
pub struct Client {
    app: Router,
    pub cookie: Option<String>,
    agent: Option<String>,
}

impl Client {
    pub fn new(app: Router) -> Self {
        Client {
            app,
            cookie: None,
            agent: None,
        }
    }

    pub fn with_agent(app: Router, agent: &str) -> Self {
        Client {
            app,
            cookie: None,
            agent: Some(agent.to_owned()),
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path).await
    }

    pub async fn post(&mut self, path: &str) -> Reply {
        self.request("POST", path).await
    }

    async fn request(&mut self, method: &str, path: &str) -> Reply {
        let reply = send(
            &self.app,
            method,
            path,
            self.cookie.as_deref().map(str::as_bytes),
            self.agent.as_deref(),
        )
        .await;
        if let Some(set) = reply.set_cookie() {
            let pair = set.split(';').next().unwrap().trim().to_owned();
            if set.contains("Max-Age=0") || pair.ends_with('=') {
                self.cookie = None;
            } else {
                self.cookie = Some(pair);
            }
        }
        reply
    }
}
