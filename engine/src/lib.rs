//! mtcpd engine: the multi-TCP aggregation tunnel as a library.
//!
//! The protocol core is sans-IO: no sockets, no clock of its own.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

// What an embedder uses: the runtime (daemon or in-process streams), the sans-IO endpoint and
// session for bringing your own I/O, their configuration and errors.
pub mod config;
mod drained;
pub mod endpoint;
pub mod error;
mod id_hash;
pub mod proxy;
pub mod runtime;
pub mod session;
pub mod settings;
pub mod tls;

// Internals: public only so the benches, fuzz targets and the simulator's tests can reach them.
// Not a stable API, and hidden from the docs.
#[doc(hidden)]
pub mod chunks;
#[doc(hidden)]
pub mod handshake;
#[doc(hidden)]
pub mod path;
// The adaptive pool's decision rule (`connection_pool_size = "auto"`); its own module doc
// says so (an outer doc here made rustdoc resolve that doc's links from the crate root).
pub mod pool_control;
#[doc(hidden)]
pub mod reorder;
#[doc(hidden)]
pub mod scheduler;
#[doc(hidden)]
pub mod sim;
#[doc(hidden)]
pub mod wire;

pub use config::Config;
pub use endpoint::{Endpoint, SessionBudget};
pub use error::{STREAM_LIMIT_KIND, SessionError, StreamError, StreamLimitError, TunnelError};
pub use path::TcpReport;
pub use scheduler::SchedulerKind;
pub use session::{Event, ReadOutcome, Role, Session, StreamId};
