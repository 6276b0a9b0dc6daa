//! Work a request starts that may outlive it (a cache fill's write, a
//! stale-while-revalidate refresh, an idempotency claim given up, a lock
//! released on drop) runs in a task of its own, inside the request's
//! span: its logs say which request it belongs to.

use std::future::Future;

use tracing::Instrument;

/// Spawns `work` on the current runtime, in the current span.
pub(crate) fn spawn_here<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(work.instrument(tracing::Span::current()))
}

/// [`spawn_here`] on `runtime`.
pub(crate) fn spawn_on<F>(
    runtime: &tokio::runtime::Handle,
    work: F,
) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime.spawn(work.instrument(tracing::Span::current()))
}
