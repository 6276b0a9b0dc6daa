//! A shared HTTP response cache (RFC 9111) in front of a handler, on Redis
//! or in memory.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use redis_layers::cache::CacheLayer;
//! use redis_layers::memory::MemoryBackend;
//!
//! async fn products() -> ([(&'static str, &'static str); 1], &'static str) {
//!     // The handler says how long its answer stays fresh for everyone.
//!     ([("cache-control", "public, max-age=60")], "[\"tea\", \"cake\"]")
//! }
//!
//! # fn run() -> Result<(), redis_layers::Error> {
//! let backend = MemoryBackend::new(); // or RedisBackend, or Backend::from_env()?
//! let cache = CacheLayer::builder(backend)
//!     .max_body(256 * 1024)
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/products", get(products))
//!     .layer(cache);
//! # Ok(()) }
//! # run().unwrap();
//! ```
//!
//! # What is stored
//!
//! Responses to `GET` (a `HEAD` is answered from the `GET` entry), as a
//! shared cache may store them (RFC 9111 §3):
//!
//! - any final status whose response states its freshness (`max-age`,
//!   `s-maxage`, `Expires`) or says `public`, codes this cache does not
//!   know included (§3); without either, only the statuses RFC 9110 calls
//!   heuristically cacheable (200, 203, 204, 300, 301, 308, 404, 405, 410,
//!   414, 501); [`only_statuses`](CacheLayerBuilder::only_statuses)
//!   narrows this (an origin with a blanket `Cache-Control` on its
//!   errors); never 206 or 304;
//! - with `must-understand` (§5.2.2.3), only a status whose requirements
//!   this cache implements (the ones RFC 9110 defines, but 206 and 304),
//!   and then despite `no-store`;
//! - never with `no-store` (in the request; in the response, but as
//!   `must-understand` allows above), `private`
//!   (qualified or not), `Vary: *`, or `Set-Cookie` (unless
//!   [`strip_set_cookie`](CacheLayerBuilder::strip_set_cookie), which
//!   stores the response without it);
//! - with `Authorization` in the request, only when the response says
//!   `public`, `s-maxage` or `must-revalidate`;
//! - freshness from `s-maxage`, then `max-age`, then `Expires` − `Date`,
//!   then 10% of the time since `Last-Modified` (at most a day), then the
//!   layer's [`default_ttl`](CacheLayerBuilder::default_ttl); a response
//!   with none of these is not stored;
//! - its age (§4.2.3) from `Date`, or from the `Age` a handler passes on
//!   (the first member of a list; anything but delta-seconds ignored)
//!   plus the time the handler took; of duplicate directives with a
//!   value (`max-age`, `s-maxage`, the stale windows), the first counts;
//! - `no-cache` responses only with a validator (`ETag` or
//!   `Last-Modified`), and then revalidated before every use;
//! - a targeted field (RFC 9213: `CDN-Cache-Control` by default, and any
//!   named with [`targeted_fields`](CacheLayerBuilder::targeted_fields),
//!   first first) with a valid Structured Fields value replaces
//!   `Cache-Control` (and `Expires` is ignored) for this cache;
//! - a handler's [`CacheOverride`] in the response's extensions forces
//!   storing (as `public, max-age=<ttl>`) or forbids it;
//!   [`min_ttl`](CacheLayerBuilder::min_ttl) and
//!   [`max_ttl`](CacheLayerBuilder::max_ttl) bound every freshness;
//! - bodies up to [`max_body`](CacheLayerBuilder::max_body); a larger
//!   response streams through uncached. The body is copied as it goes to
//!   the client and stored once it has ended; a client that goes away
//!   first leaves nothing stored.
//!
//! The key hashes the host, path and query (SHA-256), so nothing a client
//! sends appears in clear in Redis. Not the scheme: one page fetched over
//! HTTP/1 (whose requests usually carry none) and over HTTP/2 (whose `:scheme` is
//! `https` behind TLS) is one entry, and one purge by URL removes it.
//! Hop-by-hop headers,
//! `Set-Cookie` and `Age` are never stored.
//! [`ignore_query_params`](CacheLayerBuilder::ignore_query_params) leaves
//! named parameters (tracking ones) out of the key, and
//! [`key_extra`](CacheLayerBuilder::key_extra) adds what a function of the
//! request returns (a tenant, a cookie's value).
//!
//! The key is the URL as the client sent it: `/products/1`, `/products/01`
//! and `/products/%31` are three keys, though a router may hand all three
//! to one handler (axum's `Path<u32>` reads each as 1), and each answer is
//! stored apart, so made-up spellings can fill the store. Keep keys
//! canonical in the application: answer any other spelling (a padded or
//! encoded id, a query the handler ignores, a `Host` it does not serve)
//! with a permanent redirect to the canonical URL (308, `no-store`) or
//! refuse it (404), before doing any work. The example app redirects.
//! ([`sort_query`](CacheLayerBuilder::sort_query) only orders the query's
//! parameters.)
//!
//! # Variants
//!
//! A response whose `Vary` names request headers is one variant of its
//! URL, kept under its own key beside the others; the URL's key then
//! names the headers, and the request's values of them pick the variant.
//! A URL holds at most [`max_variants`](CacheLayerBuilder::max_variants)
//! places (16 by default): a variant keeps its place until it expires and
//! as long again, and a new variant is stored only where a place is free,
//! so made-up values of a varied header cannot push out the variants
//! stored before them (a popular new variant waits for a place as long,
//! answered by the handler meanwhile). A response that varies on other
//! headers (or on none) replaces every variant of its URL; keep a URL's
//! `Vary` list the same for every response (one that depends on the
//! request lets a client clear the URL's variants). Names are compared
//! in any order. An instance that has seen a URL vary reads the
//! request's variant and the URL's pointer at once (one `MGET`);
//! otherwise it reads the pointer first (two round trips). A variant is
//! used only while the pointer it was stored under is there: whatever
//! removes the pointer (an invalidation, a purge by URL, an eviction)
//! retires every variant at once. Each variant is filled under a lease of
//! its own (the first fill of a URL, which cannot know it varies, under the
//! URL's); after an invalidation of a URL, a variant's fill is stored
//! only from a second later (clocks may differ that much; as with a tag's
//! purge), so a variant fetched in that second is answered, not stored.
//!
//! # What a request gets
//!
//! - A usable stored response (fresh, and, with
//!   [`RequestDirectives::Honour`], acceptable to the request's `max-age`,
//!   `min-fresh`, `max-stale` and `no-cache`; by default a client's
//!   request directives are [ignored](RequestDirectives::Ignore) but for
//!   `no-store` and `only-if-cached`), with `Age` and
//!   `Cache-Status: redis-layers; hit; ttl=<seconds left>`; or a 304 when
//!   its `If-None-Match` (weak comparison, or `*`; else
//!   `If-Modified-Since`, against `Last-Modified`, else `Date`, else the
//!   time stored) matches the stored response, with the fields RFC 9110
//!   §15.4.5 lists; or, for a single byte `Range` on a stored 200, a 206
//!   of that part (416 when it is past the end; `If-Range` must match the
//!   stored response strongly, else the whole is sent). Several ranges
//!   get the whole response.
//! - A request with `If-Match` or `If-Unmodified-Since` (preconditions
//!   for the origin, RFC 9111 §4.3.2): answered from the store by
//!   default, like the client's other requests of the cache; with
//!   [`RequestDirectives::Honour`] sent to the handler with them intact.
//!   The handler's answer to one is never stored.
//! - Otherwise the handler's response, with `Cache-Status:
//!   redis-layers; fwd=<why>; fwd-status=<status>` (`uri-miss`,
//!   `vary-miss`, `stale`, `request`, `bypass`, or `miss` with a
//!   `detail`), plus
//!   `stored` when it is being stored.
//! - `only-if-cached` without a usable stored response: 504.
//!
//! # Stale responses
//!
//! - **Revalidation**: a stale entry with a validator is kept
//!   [`keep_stale`](CacheLayerBuilder::keep_stale) longer (one minute by
//!   default); the next request for it goes to the handler with
//!   `If-None-Match` / `If-Modified-Since` added, and a 304 refreshes the
//!   stored fields and freshness (RFC 9111 §4.3.4): the client gets the
//!   stored response, `Cache-Status: ...; fwd=stale; fwd-status=304`.
//! - **stale-while-revalidate** (RFC 5861, from the response or
//!   [`stale_while_revalidate`](CacheLayerBuilder::stale_while_revalidate)):
//!   within the window a stale entry is served at once and one background
//!   request per stale version refreshes it.
//! - **stale-if-error** (from the response or
//!   [`stale_if_error`](CacheLayerBuilder::stale_if_error)): within the
//!   window, a handler that fails or answers 5xx is replaced by the stale
//!   entry.
//! - `must-revalidate`, `proxy-revalidate`, `s-maxage` and `no-cache`
//!   forbid serving stale, as RFC 9111 §4.2.4 says.
//!
//! # Concurrent misses, stale entries and revalidations
//!
//! Every way a GET reaches the handler — a miss, a stale entry past its
//! stale-while-revalidate window (revalidated when it has a validator),
//! another `Vary` variant, or (with [`RequestDirectives::Honour`]) a
//! request whose `no-cache` or `max-age` refuses the stored response —
//! runs the handler once per key at a time, across instances:
//! on each instance the first miss leads and the others wait for it in
//! process; the leader then takes a short fill lease in the store (`SET
//! ... NX PX`, [`coalesce_wait`](CacheLayerBuilder::coalesce_wait) long,
//! at least 1 s, renewed while its fill runs, for up to a minute: a fill
//! slower than that, a slow client's body included, is not stored).
//! The instance holding it asks the handler; the others look for the
//! entry every 25 ms until it is there (`Cache-Status: ...; collapsed`),
//! the lease ends, or the wait is over. A response that may not be stored
//! is never handed to anyone: its lease is given up at once, and the
//! waiters ask the handler themselves. A waiter takes any entry stored
//! after it arrived as the answer to its own request directives (it is
//! as fresh as a fetch of its own would be): so 50 concurrent hard
//! reloads of a page make one fetch, not 50. A stale-while-revalidate
//! refresh takes the same fill lease, so one instance refreshes.
//!
//! # Invalidation and tags
//!
//! A non-error response to an unsafe method (`POST`, `PUT`, `PATCH`,
//! `DELETE`, and any method whose safety this cache does not know, as RFC
//! 9111 §4.4 asks) removes what is stored for its URI and for `Location` /
//! `Content-Location` on the same origin, before the response is
//! returned. `GET`, `HEAD`, `OPTIONS`, `TRACE` and `CONNECT` remove
//! nothing. So a catch-all handler that answers 2xx to any method lets
//! any client evict a page with a made-up method: answer 405 to the
//! methods you do not implement (axum's routers do).
//!
//! A handler tags its response in a `Cache-Tag` header (comma-separated;
//! the name is [`tag_header`](CacheLayerBuilder::tag_header); the layer
//! removes it). A [`Purger`] ([`CacheLayer::purger`], or
//! `Extension<Purger>` in a handler) removes every entry of a tag, or one
//! URL's entry, from the shared store: every instance sees it at once.
//!
//! Each tag records the entries stored with it that may still live (on
//! Redis a sorted set per tag, scored by each entry's expiry: a write to
//! the tag drops the entries that are gone), and at most
//! [`MAX_TAG_MEMBERS`] of them. An entry is stored only once every one of
//! its tags has recorded it, so a purge of a tag removes every live entry
//! stored with it: when a tag already records that many live entries, a
//! response naming it is served but **not stored** (`debug` log) until
//! some of them expire or the tag is purged. Not caching a page costs a
//! fetch; an entry its tag could not record would survive a purge of
//! the tag, and dropping recorded entries to make room would let a
//! flood of made-up URLs under one tag push the popular pages out. Keep
//! tags narrow (`product-7`, not `everything`) and URLs canonical (see
//! above) so that a tag's live entries stay well below the bound.
//!
//! A purge goes in steps of at most [`PURGE_BATCH`] entries, each
//! removed and then announced (to local tiers) in one message, so no
//! command, pipeline or message names every entry of a large tag. Its
//! first step sets aside the entries the tag records then, and it ends
//! once those are gone, however busy the tag is; an entry stored with the
//! tag meanwhile is left for the next purge. A purge that fails half-way
//! leaves the rest set aside, and the next purge of the tag takes them
//! too.
//!
//! **A fill never outlives a write.** A response the handler built from
//! data read before a write must not be stored after that write's
//! invalidation, or it would serve the old page (to the writer too) until
//! it expires. Only the holder of a key's fill lease stores its entry,
//! and only while it still holds it: an invalidation (an unsafe method,
//! [`Purger::purge_url`], or a purge of a tag that records the entry)
//! removes the lease with the entry, and the fill's write then writes
//! nothing. A purge cannot name the fills of its tag still running (a
//! response names its tags only once it is built), so each tag remembers
//! when its last purge began (for [`FILL_HORIZON`], 10 minutes), and a
//! response with that tag whose fill began before then, or less than a
//! second after (the instance's clock and Redis's may differ by that
//! much), is served but not stored: for about a second after a purge, a
//! tag's pages are fetched without being stored. The lease is renewed
//! while a fill runs, so a slow handler's response is still stored; a
//! fill slower than [`FILL_HORIZON`] is not. A request that reaches the
//! handler without the lease (the lease unavailable, or still held by a
//! slow fill elsewhere past [`coalesce_wait`](CacheLayerBuilder::coalesce_wait);
//! a waiter on this instance whose leader's response was not stored; a
//! `HEAD`, which at most freshens a stale entry's fields under the lease
//! it took before its handler ran; a request made while the store fails)
//! is answered and not stored. A purge marker must not be evicted before its ten minutes:
//! the memory backend never evicts one; with Redis, prefer
//! `maxmemory-policy noeviction` or enough memory (an evicted marker lets
//! a fill that began before its purge be stored).
//!
//! [`Purger::purge_all`] purges everything without listing anything: every
//! entry key is made under the store's generation (a counter, 0 until the
//! first such purge), and the purge starts the next one, so no earlier
//! entry is found again (they expire on their own). The purging instance
//! sees it at once, instances with a local tier as soon as they hear it,
//! the others within their
//! [`generation_refresh`](CacheLayerBuilder::generation_refresh) (1 s by
//! default: each instance asks the store for the generation at most that
//! often on reads, one request paying one more `GET`; every unsafe method
//! asks, to invalidate under the current generation).
//!
//! ```
//! use axum::{extract::Path, routing::{get, post}, Extension, Router};
//! use redis_layers::cache::{CacheLayer, Purger};
//! use redis_layers::memory::MemoryBackend;
//!
//! async fn product(Path(id): Path<u32>) -> ([(&'static str, String); 2], String) {
//!     let tags = format!("products, product-{id}");
//!     ([("cache-control", "public, max-age=300".into()), ("cache-tag", tags)], format!("product {id}"))
//! }
//!
//! async fn set_price(Extension(purger): Extension<Purger>, Path(id): Path<u32>) -> &'static str {
//!     // ... change the price, then:
//!     let _ = purger.purge_tag(&format!("product-{id}")).await;
//!     "ok"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(product))
//!     .route("/admin/products/{id}/price", post(set_price))
//!     .layer(CacheLayer::new(MemoryBackend::new()));
//! ```
//!
//! Ages are measured with this instance's clock (RFC 9111 §4.2.3): skewed
//! instances sharing a store see an entry older or younger by the skew.
//!
//! # Stacking with sessions
//!
//! Either order keeps one user's page from another:
//!
//! - **Outside the session layer** (`.layer(session)` first, then
//!   `.layer(cache)`; the recommended order): the session layer marks
//!   every response whose handler used the session (read it, wrote to it,
//!   or called any other method of the handle) with `Vary: Cookie` (and
//!   `private` when the request had a cookie), and the cache honours those
//!   marks. A handler that uses the session only for some requests marks
//!   only those; a response it gives without touching it is shared.
//! - **Inside it**: the cache sees the session handle, so a request that
//!   carries a session cookie goes to the handler (`Cache-Status: ...;
//!   fwd=bypass`) and a response whose handler used the session is never
//!   stored; pages that never read it are cached for cookie-less requests.
//!
//! # Failures
//!
//! By default the cache never turns a working handler into an error: when
//! the store fails (down, or slower than its deadline) the request goes to
//! the handler (`Cache-Status: ...; fwd=miss; detail=store-error`), and a
//! failed write or invalidation is logged. (An origin that only stands up
//! behind its cache can have a failed lookup answered with 503 instead:
//! [`on_store_error`](CacheLayerBuilder::on_store_error)`(Closed)`.) Such a response is not stored:
//! its write could land once a paused Redis resumes, and a handler that
//! shares the store may have made a degraded page meanwhile (a default
//! price). Tags never reach the client, whatever failed.
//!
//! A 304 from the handler during a revalidation answers the client with
//! the refreshed entry plus the 304's own `Set-Cookie` (a login made by a
//! layer inside this one is not lost); the cookie is never stored, and a
//! 304 carrying one refreshes the entry only with
//! [`strip_set_cookie`](CacheLayerBuilder::strip_set_cookie).
//!
//! # Round trips
//!
//! | request | store calls |
//! |---|---|
//! | hit | 1 `GET`; of a variant, 1 `MGET` (it and its URL's pointer), and the first time an instance meets the URL 1 `GET` (the pointer) before it |
//! | miss | 1 `GET` (a variant's: 1 `MGET`, then 1 `GET` of the pointer, and 1 `MGET` more when the URL now varies on other fields), then `SET ... NX` (the fill lease) and `GET` pipelined (a fill that ended just before is answered from, not fetched again), then in the background after the body: 1 small script writing the entry for the lease's holder and giving the lease up (for a tagged response 2 round trips: 1 small script per tag, concurrently, recording the entry, then that one); a response not stored gives the lease up (1 small script); a fill running longer than a third of `coalesce_wait` renews its lease that often (1 small script each) |
//! | miss while another instance fills | 1 `GET`, `SET ... NX` + `GET`, then `GET` + `EXISTS` every 25 ms until the entry is there |
//! | revalidation (304) | as a miss |
//! | request `no-cache` (with `RequestDirectives::Honour`) | as a miss |
//! | hit in the local tier | 0 |
//! | unsafe method | 1 `GET` (the generation), 1 small script per invalidated URI, one after another (its entry or pointer, its variants, its fill lease, and the stamp that keeps out its variants' earlier fills; per generation, when this instance knew an older one), 1 `PUBLISH`; concurrent writes to the same URIs share these (a run begun after each handler finished serves every write queued meanwhile: 200 concurrent `POST`s to one URI measured 2 runs) |
//! | purge a tag | per step of up to [`PURGE_BATCH`] entries: 1 small script (setting the tag's entries aside, on the first step; reading a batch), 1 pipeline of `DEL`s (each of an entry and its fill lease) and a `ZREM`, 1 `PUBLISH`; then 1 script finding none left |
//! | purge everything | 1 small script (the next generation), 1 `PUBLISH` |
//! | once per `generation_refresh`, one request | 1 more `GET` (the generation) |
//!
//! # The local tier
//!
//! [`local_tier`](CacheLayerBuilder::local_tier) keeps decoded entries in
//! process (a bounded `quick_cache`): a hit there costs no round trip
//! (`Cache-Status: ...; detail=local`). Every purge and invalidation, on
//! any instance, is announced over the store (Redis `PUBLISH` on
//! `{prefix}:cache:events`) and drops the copies everywhere; while the
//! subscription is down (closed, or silent: it is pinged every 3 s, and a
//! ping unanswered for 2 s counts as down, so a dead connection empties
//! the tier within 5 s) the tier is emptied and unused, and it is emptied
//! again when it comes back. A copy is an entry as it was stored: a newer
//! write by another instance (not a purge) is seen once the copy goes
//! stale.
//!
//! Each thread keeps its own copies of the tier's entries it answers from
//! (up to 64 per tier, then it starts over; only entries whose body is at
//! most 16 KiB and whose URL is at most 512 bytes; about 1 MiB per thread
//! and tier): a hit there takes no lock and touches no reference count of
//! the tier's, and is answered before the request's future is even made.
//! Once the tier has applied a change it heard, or kept an entry, a
//! thread's next hit checks its copy against the tier again (confirmed, or
//! replaced), so no thread answers from a copy the tier dropped for a purge
//! or an invalidation, or replaced. Other entries are answered from the
//! tier's copy.
//!
//! Each thread also remembers the entries it read from the store lately
//! (up to 64, of at most 16 KiB stored): a read that returns the same bytes
//! again reuses their decoded form and prepared header fields.

mod answer;
mod coalesce;
mod config;
mod directives;
mod fields;
mod flight;
mod flow;
mod generation;
mod invalidate;
mod key;
mod layer;
mod layout;
mod local;
mod lookup;
mod miss;
mod policy;
mod purger;
mod revalidate;
pub mod store;
mod variants;

/// The old name of the cache's response body, now every layer's
/// [`ResponseBody`](crate::ResponseBody).
#[deprecated(
    since = "0.2.0",
    note = "the cache's body is `redis_layers::ResponseBody`"
)]
pub type CacheBody<B> = crate::ResponseBody<B>;
pub use config::{
    DEFAULT_COALESCE_WAIT, DEFAULT_GENERATION_REFRESH, DEFAULT_KEEP_STALE, DEFAULT_MAX_BODY,
    DEFAULT_MAX_VARIANTS, DEFAULT_NAME, DEFAULT_TAG_HEADER, DEFAULT_TARGETED,
};
pub use directives::{CacheOverride, RequestDirectives};
pub use layer::{CacheLayer, CacheLayerBuilder, CacheService, ResponseFuture};
pub use purger::{Purger, PURGE_BATCH};

/// The old name of [`CacheService`] (every layer's service is now named
/// `<Layer>Service`).
#[deprecated(since = "0.2.0", note = "renamed `CacheService`")]
pub type Cache<S> = CacheService<S>;
pub use store::{CacheStore, Fill, FILL_HORIZON, MAX_TAG_MEMBERS};
