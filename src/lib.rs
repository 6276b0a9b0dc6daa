#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod error;
mod keys;
mod problem;

pub mod memory;
pub mod redis;
#[cfg(feature = "session")]
pub mod session;

pub use body::ResponseBody;
pub use error::{Error, ErrorKind};
pub use keys::{Namespace, TaggedKeys};
pub use problem::Problem;
