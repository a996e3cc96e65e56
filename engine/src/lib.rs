//! mtcpd engine: the multi-TCP aggregation tunnel as a library.
//!
//! The protocol core is sans-IO: no sockets, no clock of its own.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod endpoint;
pub mod error;
pub mod handshake;
pub mod path;
pub mod reorder;
pub mod runtime;
pub mod scheduler;
pub mod session;
pub mod settings;
pub mod sim;
pub mod wire;

pub use config::Config;
pub use endpoint::{Endpoint, SessionBudget};
pub use error::{SessionError, StreamError, TunnelError};
pub use session::{Event, ReadOutcome, Role, Session, StreamId};
