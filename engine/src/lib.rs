//! mtcpd engine: the multi-TCP aggregation tunnel as a library.
//!
//! The protocol core is sans-IO: no sockets, no clock of its own.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod wire;
