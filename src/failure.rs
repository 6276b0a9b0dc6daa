//! What a layer does when its store fails: one policy type for every layer.

/// What a layer does when its store fails or does not answer within the
/// backend's deadline.
///
/// "Closed" answers with the store-failure problem (503 when the store is
/// unreachable, 500 when it answered with an error, see
/// [`Problem::store_failure`](crate::Problem::store_failure)); "open"
/// carries on without the layer's service, logged and counted. Per layer:
///
/// | layer | set with | default | open means |
/// |---|---|---|---|
/// | session | `SessionLayerBuilder::on_store_error` | closed | no session for the request, nothing saved |
/// | rate limit | `RateLimitLayerBuilder::on_store_error`, per rule `Rule::on_store_error` | open | the request goes through, uncounted |
/// | cache | always open | open | the handler answers, nothing stored (`Cache-Status: ...; detail=store-error`) |
/// | idempotency | always closed | closed | (none: a request would risk running twice) |
/// | lock | always closed | closed | (none: a handler would run without its lock) |
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
