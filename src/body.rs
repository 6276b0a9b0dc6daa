//! The response body every layer returns: the inner service's body
//! (copied on its way when the cache stores it), or a small body of the
//! layer's own (a problem+json rejection, a stored response).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that passed through one of this crate's
    /// layers: the inner service's body unchanged (the cache copies it on
    /// its way when it stores it, without holding it up), or a complete
    /// body the layer wrote itself.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
        Chain { prefix: Option<Bytes>, body: Pin<Box<B>> },
        // The inner body, copied on its way while the copy lasts.
        Tapped { #[pin] body: B, tap: Option<Box<Tap>> },
    }
}

/// A copy of a body being sent, up to `max` bytes, handed to `done` once
/// the whole body has passed (never for a body that ends early, fails, has
/// trailers or outgrows `max`).
pub(crate) struct Tap {
    buf: BytesMut,
    max: usize,
    // In a mutex only so that every layer's body stays `Sync` (it is
    // taken once, at the end).
    done: std::sync::Mutex<Box<dyn FnOnce(Bytes) + Send>>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("len", &self.buf.len())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Tap {
    /// A copy of at most `max` bytes (`hint`: the expected length), for
    /// `done`.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) fn new(max: usize, hint: usize, done: impl FnOnce(Bytes) + Send + 'static) -> Self {
        Tap {
            buf: BytesMut::with_capacity(hint.min(max)),
            max,
            done: std::sync::Mutex::new(Box::new(done)),
        }
    }

    /// Hands the copy over.
    fn finish(self) {
        let done = self.done.into_inner().unwrap_or_else(|e| e.into_inner());
        done(self.buf.freeze());
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    /// `prefix` (bytes already read from `body`), then the rest of `body`.
    pub fn chain(prefix: impl Into<Bytes>, body: Pin<Box<B>>) -> Self {
        let prefix: Bytes = prefix.into();
        ResponseBody {
            kind: Kind::Chain {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    /// The inner service's body, copied by `tap` on its way (when there is
    /// one).
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) fn tapped(body: B, tap: Option<Tap>) -> Self {
        match tap {
            Some(tap) => ResponseBody {
                kind: Kind::Tapped {
                    body,
                    tap: Some(Box::new(tap)),
                },
            },
            None => ResponseBody::inner(body),
        }
    }

    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ResponseBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Chain { prefix, body } => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => body.as_mut().poll_frame(cx),
            },
            KindProj::Tapped { mut body, tap } => {
                let polled = body.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                        Some(data) => {
                            let fits = tap
                                .as_ref()
                                .is_some_and(|t| t.buf.len() + data.len() <= t.max);
                            match tap {
                                Some(t) if fits => t.buf.extend_from_slice(data),
                                _ => *tap = None,
                            }
                            // A server stops polling once a body with a
                            // known length has sent it all: the end is
                            // now, not at a `None` that may never be asked
                            // for.
                            if body.is_end_stream() {
                                if let Some(t) = tap.take() {
                                    (*t).finish();
                                }
                            }
                        }
                        // Trailers: not kept.
                        None => *tap = None,
                    },
                    Poll::Ready(Some(Err(_))) => *tap = None,
                    Poll::Ready(None) => {
                        if let Some(t) = tap.take() {
                            (*t).finish();
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Chain { prefix, body } => prefix.is_none() && body.is_end_stream(),
            // With a copy pending, say "not yet" so the caller polls once
            // more and the end is seen (and the copy handed over).
            Kind::Tapped { body, tap } => tap.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } | Kind::Tapped { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Chain { prefix, body } => {
                let extra = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// Why a request body could not be read whole.
#[cfg(any(feature = "idempotency", feature = "session"))]
pub(crate) enum ReadError {
    /// It is longer than allowed.
    TooLarge,
    /// Reading it failed.
    Read,
}

/// The whole body, at most `max` bytes.
#[cfg(any(feature = "idempotency", feature = "session"))]
pub(crate) async fn read_whole<B: Body<Data = Bytes>>(
    body: B,
    max: usize,
) -> Result<Bytes, ReadError> {
    if body.size_hint().lower() > max as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    // The first data frame as it is (a body in one frame, the usual case,
    // is never copied); with more, all of them copied into one buffer.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|_| ReadError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        len = len.saturating_add(data.len());
        if len > max {
            return Err(ReadError::TooLarge);
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(head) => {
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_bodies_yield_their_bytes_once() {
        let body: ResponseBody<http_body_util::Empty<Bytes>> = ResponseBody::full("abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        let empty: ResponseBody<http_body_util::Empty<Bytes>> = ResponseBody::full("");
        assert!(empty.is_end_stream());
    }

    #[tokio::test]
    async fn a_chain_sends_its_prefix_then_the_rest() {
        let rest = Box::pin(http_body_util::Full::new(Bytes::from_static(b"def")));
        let body = ResponseBody::chain(Bytes::from_static(b"abc"), rest);
        assert_eq!(body.size_hint().exact(), Some(6));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcdef");
    }

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A body of several data frames.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&'static str]) -> Chunks {
        Chunks(
            parts
                .iter()
                .map(|p| Bytes::from_static(p.as_bytes()))
                .collect(),
        )
    }

    fn copied(max: usize) -> (Tap, Arc<Mutex<Option<Bytes>>>) {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        (
            Tap::new(max, 0, move |b| *s.lock().unwrap() = Some(b)),
            seen,
        )
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_copied_whole() {
        let (copy, seen) = copied(10);
        let body = ResponseBody::tapped(chunks(&["abc", "defg"]), Some(copy));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdefg");
        assert_eq!(seen.lock().unwrap().as_deref(), Some(&b"abcdefg"[..]));
    }

    #[tokio::test]
    async fn the_copy_is_done_when_the_last_bytes_pass() {
        // As a server does with a known length: it stops at the last
        // bytes and never polls for the end.
        let (copy, seen) = copied(100);
        let mut body = ResponseBody::tapped(
            http_body_util::Full::new(Bytes::from_static(b"whole")),
            Some(copy),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().map(|d| &d[..]), Some(&b"whole"[..]));
        assert_eq!(seen.lock().unwrap().as_deref(), Some(&b"whole"[..]));
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_longer_body_streams_through_uncopied() {
        let (copy, seen) = copied(5);
        let body = ResponseBody::tapped(chunks(&["abc", "defg"]), Some(copy));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdefg");
        assert!(seen.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_copied() {
        let (copy, seen) = copied(100);
        let mut body = ResponseBody::tapped(chunks(&["abc", "def"]), Some(copy));
        let _ = body.frame().await;
        drop(body);
        assert!(seen.lock().unwrap().is_none());
    }

    /// Every layer's body is `Send` and `Sync` when the inner body is, so
    /// it can be boxed (`BoxBody`) as hyper stacks do.
    #[test]
    fn the_body_is_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<ResponseBody<http_body_util::Full<Bytes>>>();
        both::<Tap>();
    }

    #[tokio::test]
    async fn inner_bodies_pass_through() {
        let body = ResponseBody::inner(http_body_util::Full::new(Bytes::from_static(b"xyz")));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"xyz");
    }
}
