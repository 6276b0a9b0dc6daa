//! A cache layer's settings as its builder took them ([`Options`]), and
//! checked ([`Config`], which every step of a request reads).

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::StatusCode;

use super::directives::RequestDirectives;
use super::flight::{Flights, Invalidations, Refreshing};
use super::generation::Generation;
use super::key::{KeyFn, KeyRules};
use super::local::LocalTier;
use super::policy::Settings;
use super::store::Store;
use super::variants::Varying;
use crate::error::{Error, ErrorKind};

/// The most a response body may weigh to be stored, by default: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The cache's name in `Cache-Status`, by default.
pub const DEFAULT_NAME: &str = "redis-layers";

/// How long (ms) a stale response with a validator is kept to be
/// revalidated, by default: one minute.
pub const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(60);

/// How long a request waits for a concurrent miss of the same key to fill
/// the entry, by default.
pub const DEFAULT_COALESCE_WAIT: Duration = Duration::from_secs(3);

/// How often a layer asks the store for the current generation, by
/// default (see
/// [`CacheLayerBuilder::generation_refresh`](crate::cache::CacheLayerBuilder::generation_refresh)).
pub const DEFAULT_GENERATION_REFRESH: Duration = Duration::from_secs(1);

/// The targeted cache-control field a cache obeys over `Cache-Control`,
/// by default (RFC 9213; see
/// [`CacheLayerBuilder::targeted_fields`](crate::cache::CacheLayerBuilder::targeted_fields)).
pub const DEFAULT_TARGETED: &str = "cdn-cache-control";

/// How many variants of one URL are stored at a time, by default (see
/// [`CacheLayerBuilder::max_variants`](crate::cache::CacheLayerBuilder::max_variants)).
pub const DEFAULT_MAX_VARIANTS: usize = 16;

/// The response header a handler names its tags in, by default
/// (comma-separated; removed before the response goes out).
pub const DEFAULT_TAG_HEADER: &str = "cache-tag";

/// The most `max_variants` may be: each fill of a variant reads the URL's
/// places, so their number stays small.
const MAX_VARIANTS: usize = 256;

/// The builder's settings, unchecked.
pub(crate) struct Options {
    pub(crate) store: Store,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) max_body: usize,
    pub(crate) name: String,
    pub(crate) strip_set_cookie: bool,
    pub(crate) sort_query: bool,
    pub(crate) ignored_params: Vec<String>,
    pub(super) key_extra: Option<KeyFn>,
    pub(crate) only_statuses: Option<Vec<StatusCode>>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) keep_stale: Duration,
    pub(crate) coalesce_wait: Duration,
    pub(crate) request_directives: RequestDirectives,
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) tag_header: String,
    pub(crate) local_tier: Option<usize>,
    pub(crate) thread_copies: bool,
    pub(crate) max_variants: usize,
    pub(crate) targeted: Vec<String>,
    pub(crate) min_ttl: Option<Duration>,
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) generation_refresh: Duration,
    pub(crate) failure: crate::FailurePolicy,
    pub(crate) on_refusal: crate::refusal::OnRefusal,
}

/// A layer's settings, checked, and its shared state.
pub(crate) struct Config {
    /// Names this layer in the threads' decoded entries (whose prepared
    /// `Cache-Status` carries the layer's name).
    pub(crate) id: u64,
    pub(crate) store: Store,
    pub(crate) settings: Settings,
    pub(crate) max_body: usize,
    pub(crate) name: String,
    /// How keys are made.
    pub(super) key: KeyRules,
    pub(crate) coalesce_wait: Duration,
    pub(crate) request_directives: RequestDirectives,
    /// The hosts served, lowercase (`host` or `host:port`); `None`: any.
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) tag_header: HeaderName,
    pub(crate) flights: Flights,
    pub(crate) refreshing: Refreshing,
    pub(crate) invalidations: Invalidations,
    pub(crate) local: Option<Arc<LocalTier>>,
    /// Each thread keeps its own copies of the local tier's small entries
    /// (see [`LocalTier::with_copy`]).
    pub(crate) thread_copies: bool,
    /// The most variants of one URL stored at a time.
    pub(crate) max_variants: usize,
    /// Which URLs vary, as this instance last learned.
    pub(crate) varying: Varying,
    pub(crate) generation: Arc<Generation>,
    /// Store failures, logged once per outage and then summarised.
    pub(crate) failures: crate::failure_log::FailureLog,
    /// What a failed lookup does.
    pub(crate) failure: crate::FailurePolicy,
    /// How refusals (fail-closed lookups) are answered.
    pub(crate) on_refusal: crate::refusal::OnRefusal,
}

impl Config {
    /// Whether requests to this URI's host (else the `Host` field) are
    /// cached: any host unless [`hosts`](crate::cache::CacheLayerBuilder::hosts) names
    /// them.
    pub(crate) fn serves(&self, uri: &http::Uri, headers: &http::HeaderMap) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        let host = uri.authority().map(|a| a.as_str()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        host.is_some_and(|host| hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }

    /// Drops local copies of `keys` here and tells every other instance.
    pub(crate) async fn announce(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        if let Some(local) = &self.local {
            local.forget(keys);
        }
        if let Err(e) = self.store.announce(keys).await {
            tracing::warn!(error = %e, "cache invalidation not announced; other local tiers keep their copies until they expire");
        }
    }

    /// The settings of `options`, checked: see
    /// [`CacheLayerBuilder::build`](crate::cache::CacheLayerBuilder::build).
    pub(crate) fn new(options: Options) -> Result<Config, Error> {
        let this = options;
        let token = !this.name.is_empty()
            && this
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(Error::new(
                ErrorKind::Config,
                format!("cache name {:?} must be a token", this.name),
            ));
        }
        if this.default_ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::new(
                ErrorKind::Config,
                "default_ttl must not be zero",
            ));
        }
        let tag_header = HeaderName::from_bytes(this.tag_header.as_bytes()).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!("tag header {:?} is not a header name", this.tag_header),
            )
        })?;
        // Windows past a year are a mistake (and `Duration::MAX` would
        // overflow the store's expiry arithmetic): refuse them here rather
        // than fail on every request.
        const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
        for (name, value) in [
            ("default_ttl", this.default_ttl),
            ("stale_while_revalidate", this.stale_while_revalidate),
            ("stale_if_error", this.stale_if_error),
            ("keep_stale", Some(this.keep_stale)),
            ("coalesce_wait", Some(this.coalesce_wait)),
            ("generation_refresh", Some(this.generation_refresh)),
            ("min_ttl", this.min_ttl),
            ("max_ttl", this.max_ttl),
        ] {
            if value.is_some_and(|v| v > LONGEST) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{name} must be at most a year"),
                ));
            }
        }
        let hosts = match this.hosts {
            None => None,
            Some(hosts) => {
                let valid = |h: &str| {
                    !h.is_empty()
                        && h.parse::<http::uri::Authority>()
                            .is_ok_and(|a| a.as_str() == h && !h.contains('@'))
                };
                if hosts.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "hosts must name at least one host",
                    ));
                }
                if let Some(bad) = hosts.iter().find(|h| !valid(h)) {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("{bad:?} is not a host (host or host:port)"),
                    ));
                }
                Some(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect())
            }
        };
        if let (Some(min), Some(max)) = (this.min_ttl, this.max_ttl) {
            if min > max {
                return Err(Error::new(
                    ErrorKind::Config,
                    "min_ttl must not be over max_ttl",
                ));
            }
        }
        if this.max_ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::new(ErrorKind::Config, "max_ttl must not be zero"));
        }
        let mut targeted = Vec::with_capacity(this.targeted.len());
        for name in &this.targeted {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(field) if field != http::header::CACHE_CONTROL => targeted.push(field),
                _ => {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "targeted field {name:?} is not a header name other than Cache-Control"
                        ),
                    ))
                }
            }
        }
        if !(1..=MAX_VARIANTS).contains(&this.max_variants) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("max_variants must be from 1 to {MAX_VARIANTS}"),
            ));
        }
        if this.generation_refresh.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "generation_refresh must not be zero",
            ));
        }
        let generation = Arc::new(Generation::new(this.generation_refresh));
        let local = match this.local_tier {
            None => None,
            Some(entries) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "a local tier is built inside a Tokio runtime",
                    ));
                }
                let heard = this.store.listen().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Config,
                        "a local tier needs a store that announces changes (a Redis backend built from a URL, or memory)",
                    )
                })?;
                Some(LocalTier::start(entries, heard, generation.clone()))
            }
        };
        let ms = |d: Duration| crate::time::millis(d);
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Config {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            store: this.store,
            settings: Settings {
                only_statuses: this.only_statuses,
                default_ttl: this.default_ttl.map(ms),
                strip_set_cookie: this.strip_set_cookie,
                stale_while_revalidate: this.stale_while_revalidate.map(ms),
                stale_if_error: this.stale_if_error.map(ms),
                keep_stale: ms(this.keep_stale),
                targeted,
                min_ttl: this.min_ttl.map(ms),
                max_ttl: this.max_ttl.map(ms),
            },
            max_body: this.max_body,
            name: this.name,
            key: KeyRules {
                sort_query: this.sort_query,
                ignored_params: this.ignored_params,
                extra: this.key_extra,
            },
            coalesce_wait: this.coalesce_wait,
            request_directives: this.request_directives,
            hosts,
            tag_header,
            flights: Flights::default(),
            refreshing: Refreshing::default(),
            invalidations: Invalidations::default(),
            local,
            thread_copies: this.thread_copies,
            max_variants: this.max_variants,
            varying: Varying::default(),
            generation,
            failures: crate::failure_log::FailureLog::new("cache"),
            failure: this.failure,
            on_refusal: this.on_refusal,
        })
    }
}
