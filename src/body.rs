//! The response body every layer returns: the inner service's body, or a
//! small body of the layer's own (a problem+json rejection).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that passed through one of this crate's
    /// layers: the inner service's body unchanged, or a complete body the
    /// layer wrote itself.
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Chain { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
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

    #[tokio::test]
    async fn inner_bodies_pass_through() {
        let body = ResponseBody::inner(http_body_util::Full::new(Bytes::from_static(b"xyz")));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"xyz");
    }
}
