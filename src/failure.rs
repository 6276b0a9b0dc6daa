//! What a layer does when its store fails: one policy type for every layer.

/// What a layer does when its store fails or does not answer within the
/// backend's deadline.
///
/// Every layer takes one (`on_store_error(..)` on its builder) and documents
/// what "open" means for it: the session layer carries on without a
/// session, a rate limiter lets the request through, a cache forwards to the
/// handler. "Closed" answers with the store-failure problem (503 when the
/// store is unreachable, see [`Problem::store_failure`](crate::Problem::store_failure)).
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
