//! What a layer does when its store fails: one policy type for every layer.

/// What a layer does when its store fails or does not answer within the
/// backend's deadline.
///
/// "Closed" answers with the store-failure problem (503 when the store is
/// unreachable, 500 when it answered with an error, see
/// [`Problem::store_failure`](crate::Problem::store_failure)); "open"
/// carries on without the layer's service, logged and counted. Per layer:
///
/// | layer | set with | default | open means | closed means |
/// |---|---|---|---|---|
/// | session | `SessionLayerBuilder::on_store_error` | closed | no session for the request, nothing saved | the store-failure problem |
/// | rate limit | `RateLimitLayerBuilder::on_store_error`, per rule `Rule::on_store_error` | open | the request goes through, uncounted | the store-failure problem |
/// | cache | `CacheLayerBuilder::on_store_error` | open | the handler answers, nothing stored (`Cache-Status: ...; detail=store-error`) | the store-failure problem instead of the handler (for an origin that only stands up behind its cache) |
/// | idempotency | `IdempotencyLayerBuilder::on_store_error` | closed | the handler runs unprotected: a retry runs it again, nothing is kept for replay | the store-failure problem: never a request without its claim |
/// | lock | `LockLayerBuilder::on_store_error` | closed | the handler runs without the lock (a session store failure while finding a `session_user` resource still refuses) | the store-failure problem: never a handler without its lock |
///
/// Every layer's store-failure answer can be restyled with its builder's
/// `on_refusal` ([`Refusal`](crate::Refusal), kind
/// [`StoreFailure`](crate::RefusalKind::StoreFailure)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Answer with a problem+json response (the default): the safe choice
    /// when the layer guards something (a login limit, a session).
    #[default]
    Closed,
    /// Carry on without the layer's service and log the failure: the
    /// choice when availability matters more than the guarantee.
    Open,
}
