#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod keys;

pub mod memory;
pub mod redis;

pub use error::{Error, ErrorKind};
pub use keys::{Namespace, TaggedKeys};
