//! The store seam's machinery, written once for every capability.
//!
//! Each capability (sessions, rate limits, the cache, idempotency) has a
//! public store trait that users may implement, and a layer that must hold
//! "any store" without a type parameter. [`store_seam!`] takes the trait's
//! method list once and writes, from it:
//!
//! - the public trait, each `async fn` becoming a method that returns
//!   `impl Future<Output = _> + Send` (an implementation may write it as
//!   an `async fn`);
//! - its implementation for [`Backend`](crate::Backend), which runs the
//!   concrete backend's (see `on_backend!`);
//! - an object-safe copy, `Dyn…`, returning boxed futures, implemented for
//!   every implementation of the trait;
//! - the `Store` enum the layer holds: this crate's backends as they are
//!   (a store call is a plain `.await`, nothing boxed), any other store
//!   behind an `Arc<dyn Dyn…>`.
//!
//! The method list, in the trait's braces: every `async fn` names its
//! lifetimes, one for `self` and one for each borrow in its arguments
//! (`<'a, 'b>(&'a self, key: &'b str)`, the same as the elided form, so
//! a store that forwards to another may write its methods with elided
//! lifetimes; the object-safe copy needs the names, to bound its boxed
//! future by each); a plain `fn` takes `&self` and owned arguments. A method
//! with a default ends with its body and a `;` (`-> R { … };`), one
//! without with `;`. Arguments are plain names (no patterns). The
//! concrete backends' implementations stay hand-written: they are the
//! real code.
//!
//! Limits: a method's attributes (its docs) reach only the public trait,
//! so a `#[cfg]` or `#[deprecated]` method does not fit; two borrows
//! sharing one lifetime name would narrow the public signature (give each
//! its own); `'fut` is the macro's.
//!
//! ```ignore
//! store_seam! {
//!     /// Where widgets live.
//!     pub trait WidgetStore: Send + Sync + 'static {
//!         /// The widget under `key`.
//!         async fn get<'a, 'b>(&'a self, key: &'b str) -> Result<Option<Bytes>, Error>;
//!         /// Forgets everything (the default cannot).
//!         async fn clear<'a>(&'a self) -> Result<(), Error> { Err(unsupported()) };
//!         /// A channel of changes, when the store has one.
//!         fn watch(&self) -> Option<Receiver<String>> { None };
//!     }
//!     dyn DynWidgetStore;
//!     enum Store;
//! }
//! ```

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future: what the object-safe store traits return.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

macro_rules! store_seam {
    (
        $(#[$tmeta:meta])*
        pub trait $Trait:ident: Send + Sync + 'static { $($methods:tt)* }
        dyn $Dyn:ident;
        enum $Store:ident;
    ) => {
        $(#[$tmeta])*
        pub trait $Trait: Send + Sync + 'static {
            $crate::seam::store_seam!(@trait $($methods)*);
        }

        impl $Trait for $crate::Backend {
            $crate::seam::store_seam!(@backend $Trait; $($methods)*);
        }

        #[doc = concat!(
            "[`", stringify!($Trait), "`] in object-safe form, implemented for every `",
            stringify!($Trait), "`: a user's store behind a pointer."
        )]
        pub(crate) trait $Dyn: Send + Sync {
            $crate::seam::store_seam!(@dyn $($methods)*);
        }

        impl<T: $Trait> $Dyn for T {
            $crate::seam::store_seam!(@blanket $Trait; $($methods)*);
        }

        /// How a layer holds its store: this crate's backends as they are
        /// (a store call is a plain `.await`, with no boxed future), any
        /// other store behind a pointer.
        #[derive(Clone)]
        pub(crate) enum $Store {
            Backend($crate::Backend),
            Custom(::std::sync::Arc<dyn $Dyn>),
        }

        impl $Store {
            pub(crate) fn new<S: $Trait>(store: S) -> Self {
                match $crate::backend::as_backend(&store) {
                    Some(b) => Self::Backend(b),
                    None => Self::Custom(::std::sync::Arc::new(store)),
                }
            }

            $crate::seam::store_seam!(@store $Trait $Dyn; $($methods)*);
        }
    };

    // The public trait's methods. `self` comes from the input, so that a
    // default body (written there) may use it.
    (@trait) => {};
    (@trait
        $(#[$m:meta])* async fn $name:ident<$($lt:lifetime),+>(
            &$slt:lifetime $self:ident $(, $arg:ident: $ty:ty)* $(,)?
        ) -> $ret:ty;
        $($rest:tt)*
    ) => {
        $(#[$m])*
        fn $name<$($lt),+>(&$slt $self $(, $arg: $ty)*)
            -> impl ::std::future::Future<Output = $ret> + Send;
        $crate::seam::store_seam!(@trait $($rest)*);
    };
    (@trait
        $(#[$m:meta])* async fn $name:ident<$($lt:lifetime),+>(
            &$slt:lifetime $self:ident $(, $arg:ident: $ty:ty)* $(,)?
        ) -> $ret:ty $body:block;
        $($rest:tt)*
    ) => {
        $(#[$m])*
        fn $name<$($lt),+>(&$slt $self $(, $arg: $ty)*)
            -> impl ::std::future::Future<Output = $ret> + Send {
            async move $body
        }
        $crate::seam::store_seam!(@trait $($rest)*);
    };
    (@trait $(#[$m:meta])* fn $name:ident(&$self:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; $($rest:tt)*) => {
        $(#[$m])*
        fn $name(&$self $(, $arg: $ty)*) -> $ret;
        $crate::seam::store_seam!(@trait $($rest)*);
    };
    (@trait $(#[$m:meta])* fn $name:ident(&$self:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $body:block; $($rest:tt)*) => {
        $(#[$m])*
        fn $name(&$self $(, $arg: $ty)*) -> $ret $body
        $crate::seam::store_seam!(@trait $($rest)*);
    };

    // `impl Trait for Backend`: the concrete backend's method.
    (@backend $Trait:ident;) => {};
    (@backend $Trait:ident;
        $(#[$m:meta])* async fn $name:ident<$($lt:lifetime),+>(
            &$slt:lifetime self $(, $arg:ident: $ty:ty)* $(,)?
        ) -> $ret:ty $($body:block)?;
        $($rest:tt)*
    ) => {
        fn $name<$($lt),+>(&$slt self $(, $arg: $ty)*)
            -> impl ::std::future::Future<Output = $ret> + Send {
            async move {
                $crate::backend::on_backend!(self, b => $Trait::$name(b $(, $arg)*).await)
            }
        }
        $crate::seam::store_seam!(@backend $Trait; $($rest)*);
    };
    (@backend $Trait:ident; $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $($body:block)?; $($rest:tt)*) => {
        fn $name(&self $(, $arg: $ty)*) -> $ret {
            $crate::backend::on_backend!(self, b => $Trait::$name(b $(, $arg)*))
        }
        $crate::seam::store_seam!(@backend $Trait; $($rest)*);
    };

    // The object-safe trait's methods: the future lives as long as the
    // shortest borrow.
    (@dyn) => {};
    (@dyn
        $(#[$m:meta])* async fn $name:ident<$($lt:lifetime),+>(
            &$slt:lifetime self $(, $arg:ident: $ty:ty)* $(,)?
        ) -> $ret:ty $($body:block)?;
        $($rest:tt)*
    ) => {
        fn $name<'fut, $($lt: 'fut),+>(&$slt self $(, $arg: $ty)*)
            -> $crate::seam::BoxFuture<'fut, $ret>;
        $crate::seam::store_seam!(@dyn $($rest)*);
    };
    (@dyn $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $($body:block)?; $($rest:tt)*) => {
        fn $name(&self $(, $arg: $ty)*) -> $ret;
        $crate::seam::store_seam!(@dyn $($rest)*);
    };

    // The object-safe trait for every implementation: boxes the future.
    (@blanket $Trait:ident;) => {};
    (@blanket $Trait:ident;
        $(#[$m:meta])* async fn $name:ident<$($lt:lifetime),+>(
            &$slt:lifetime self $(, $arg:ident: $ty:ty)* $(,)?
        ) -> $ret:ty $($body:block)?;
        $($rest:tt)*
    ) => {
        fn $name<'fut, $($lt: 'fut),+>(&$slt self $(, $arg: $ty)*)
            -> $crate::seam::BoxFuture<'fut, $ret> {
            ::std::boxed::Box::pin($Trait::$name(self $(, $arg)*))
        }
        $crate::seam::store_seam!(@blanket $Trait; $($rest)*);
    };
    (@blanket $Trait:ident; $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $($body:block)?; $($rest:tt)*) => {
        fn $name(&self $(, $arg: $ty)*) -> $ret {
            $Trait::$name(self $(, $arg)*)
        }
        $crate::seam::store_seam!(@blanket $Trait; $($rest)*);
    };

    // The layer's `Store`: a backend unboxed, a user's store boxed.
    (@store $Trait:ident $Dyn:ident;) => {};
    (@store $Trait:ident $Dyn:ident;
        $(#[$m:meta])* async fn $name:ident<$($lt:lifetime),+>(
            &$slt:lifetime self $(, $arg:ident: $ty:ty)* $(,)?
        ) -> $ret:ty $($body:block)?;
        $($rest:tt)*
    ) => {
        pub(crate) async fn $name<$($lt),+>(&$slt self $(, $arg: $ty)*) -> $ret {
            match self {
                Self::Backend(b) => $Trait::$name(b $(, $arg)*).await,
                Self::Custom(s) => $Dyn::$name(&**s $(, $arg)*).await,
            }
        }
        $crate::seam::store_seam!(@store $Trait $Dyn; $($rest)*);
    };
    (@store $Trait:ident $Dyn:ident; $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $($body:block)?; $($rest:tt)*) => {
        pub(crate) fn $name(&self $(, $arg: $ty)*) -> $ret {
            match self {
                Self::Backend(b) => $Trait::$name(b $(, $arg)*),
                Self::Custom(s) => $Dyn::$name(&**s $(, $arg)*),
            }
        }
        $crate::seam::store_seam!(@store $Trait $Dyn; $($rest)*);
    };
}
pub(crate) use store_seam;
