//! [`Typed`]: one struct kept under one session key, with a documented
//! answer for a stored value that no longer fits the struct.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Session, SessionError};

/// A type kept in the session under its own key.
///
/// ```
/// use redis_layers::session::SessionValue;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct Cart {
///     items: Vec<u32>,
/// }
///
/// impl SessionValue for Cart {
///     const KEY: &'static str = "cart";
/// }
/// ```
pub trait SessionValue: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The session key the value is stored under (as JSON, like
    /// [`Session::insert`]).
    const KEY: &'static str;
}

/// A typed handle on the value of type `T` in the request's session: from
/// [`Session::typed`], or in axum as an extractor (`cart: Typed<Cart>`).
///
/// Reads cost what [`Session::get`] costs (one load per request, shared
/// with every other read); writes record a change saved with the response,
/// like [`Session::insert`].
///
/// # A value that no longer fits
///
/// When a deploy changes `T` so that a value stored by the older version no
/// longer deserialises, [`get`](Self::get) treats it as absent: it logs a
/// warning naming the key and answers `None`, so the user starts from an
/// empty value instead of meeting an error on every request until the
/// session ends. The stored value is left as it is until a
/// [`set`](Self::set) or [`update`](Self::update) replaces it: during a
/// rolling deploy (or after a rollback) the older version still reads it,
/// and a value written meanwhile by another request is never removed
/// because of this one's read. [`try_get`](Self::try_get) returns the
/// error instead, for code that migrates old values itself.
///
/// ```
/// use redis_layers::session::{SessionError, SessionValue, Typed};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct Cart {
///     items: Vec<u32>,
/// }
///
/// impl SessionValue for Cart {
///     const KEY: &'static str = "cart";
/// }
///
/// // An axum handler: `Typed<Cart>` is an extractor.
/// async fn add_item(cart: Typed<Cart>) -> Result<String, SessionError> {
///     let count = cart.update(|cart| {
///         cart.items.push(7);
///         cart.items.len()
///     }).await?;
///     Ok(format!("{count} items"))
/// }
/// ```
pub struct Typed<T> {
    session: Session,
    value: PhantomData<fn() -> T>,
}

impl<T> Clone for Typed<T> {
    fn clone(&self) -> Self {
        Typed {
            session: self.session.clone(),
            value: PhantomData,
        }
    }
}

impl<T: SessionValue> fmt::Debug for Typed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Typed").field("key", &T::KEY).finish()
    }
}

impl Session {
    /// The typed handle on `T`'s value in this session (see [`Typed`]).
    pub fn typed<T: SessionValue>(&self) -> Typed<T> {
        Typed {
            session: self.clone(),
            value: PhantomData,
        }
    }
}

impl<T: SessionValue> Typed<T> {
    /// The stored value; `None` when there is none, or when the stored one
    /// no longer deserialises into `T` (logged; see the [type's
    /// docs](Typed)).
    pub async fn get(&self) -> Result<Option<T>, SessionError> {
        match self.try_get().await {
            Err(SessionError::Deserialize { key, source }) => {
                tracing::warn!(
                    key,
                    error = %source,
                    "a session value no longer fits its type: read as absent"
                );
                Ok(None)
            }
            other => other,
        }
    }

    /// The stored value, or the error when it does not deserialise into `T`
    /// (a [`SessionError::Deserialize`]; the stored value stays).
    pub async fn try_get(&self) -> Result<Option<T>, SessionError> {
        self.session.get(T::KEY).await
    }

    /// Stores `value` when the response goes out (no store access now).
    pub fn set(&self, value: &T) -> Result<(), SessionError> {
        self.session.insert(T::KEY, value)
    }

    /// Removes the value when the response goes out.
    pub fn remove(&self) {
        self.session.remove(T::KEY);
    }

    /// Changes the value in place, starting from `T::default()` when there
    /// is none (or the stored one no longer fits), stores the result and
    /// returns what `change` returned.
    pub async fn update<R>(&self, change: impl FnOnce(&mut T) -> R) -> Result<R, SessionError>
    where
        T: Default,
    {
        let mut value = self.get().await?.unwrap_or_default();
        let out = change(&mut value);
        self.set(&value)?;
        Ok(out)
    }

    /// The session this handle reads.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync, T: SessionValue> axum_core::extract::FromRequestParts<S> for Typed<T> {
    type Rejection = super::MissingSessionLayer;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Session::of(parts)?.typed())
    }
}
