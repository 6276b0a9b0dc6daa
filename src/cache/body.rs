//! The body of a response that passed through the cache: a stored body,
//! or the handler's, copied on its way to the client when it is to be
//! stored.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A cached response's body, or the handler's (see the module docs).
    #[derive(Debug)]
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B, copy: Option<Copy> },
        Full { data: Option<Bytes> },
    }
}

/// A body being copied for the store: what has passed so far, the most it
/// may hold, and what to do with it once the body has ended.
pub(crate) struct Copy {
    buf: BytesMut,
    max: usize,
    done: Box<dyn FnOnce(Bytes) + Send>,
}

impl std::fmt::Debug for Copy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copy")
            .field("len", &self.buf.len())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Copy {
    /// Copies up to `max` bytes, then calls `done` with them when the body
    /// ends. A longer body, trailers, an error or a body dropped before its
    /// end (a client gone) give up the copy: `done` is never called.
    pub(crate) fn new(max: usize, hint: usize, done: impl FnOnce(Bytes) + Send + 'static) -> Self {
        Copy {
            buf: BytesMut::with_capacity(hint.min(max)),
            max,
            done: Box::new(done),
        }
    }
}

impl<B> CacheBody<B> {
    pub(crate) fn inner(body: B, copy: Option<Copy>) -> Self {
        CacheBody {
            kind: Kind::Inner { body, copy },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        CacheBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { mut body, copy } => {
                let polled = body.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                        Some(data) => {
                            let fits = copy
                                .as_ref()
                                .is_some_and(|c| c.buf.len() + data.len() <= c.max);
                            match copy {
                                Some(c) if fits => c.buf.extend_from_slice(data),
                                _ => *copy = None,
                            }
                            // A server stops polling once a body with a
                            // known length has sent it all: the end is
                            // now, not at a `None` that may never be asked
                            // for.
                            if body.is_end_stream() {
                                if let Some(c) = copy.take() {
                                    (c.done)(c.buf.freeze());
                                }
                            }
                        }
                        // Trailers: not kept.
                        None => *copy = None,
                    },
                    Poll::Ready(Some(Err(_))) => *copy = None,
                    Poll::Ready(None) => {
                        if let Some(c) = copy.take() {
                            (c.done)(c.buf.freeze());
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
            // With a copy pending, say "not yet" so the caller polls once
            // more and the end is seen (and the copy stored).
            Kind::Inner { body, copy } => copy.is_none() && body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
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

    fn copied(max: usize) -> (Copy, Arc<Mutex<Option<Bytes>>>) {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        (
            Copy::new(max, 0, move |b| *s.lock().unwrap() = Some(b)),
            seen,
        )
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_copied_whole() {
        let (copy, seen) = copied(10);
        let body = CacheBody::inner(chunks(&["abc", "defg"]), Some(copy));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdefg");
        assert_eq!(seen.lock().unwrap().as_deref(), Some(&b"abcdefg"[..]));
    }

    #[tokio::test]
    async fn the_copy_is_done_when_the_last_bytes_pass() {
        // As a server does with a known length: it stops at the last
        // bytes and never polls for the end.
        let (copy, seen) = copied(100);
        let mut body = CacheBody::inner(
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
        let body = CacheBody::inner(chunks(&["abc", "defg"]), Some(copy));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdefg");
        assert!(seen.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_copied() {
        let (copy, seen) = copied(100);
        let mut body = CacheBody::inner(chunks(&["abc", "def"]), Some(copy));
        let _ = body.frame().await;
        drop(body);
        assert!(seen.lock().unwrap().is_none());
    }
}
