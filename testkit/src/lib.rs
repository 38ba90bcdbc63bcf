//! What the integration tests (`tests/`) and the load generator (`examples/loadtest.rs`) of
//! jelou-bridge share, written once:
//!
//! - [`names`]: the services' URLs, the stand-in's credentials, unique names.
//! - [`broker`]: connections that give up, queue depths, messages seen, clean-up.
//! - [`bus`]: the helpdesk's side of the bus for one test, every message checked against
//!   the committed schemas (`contract`).
//! - [`app`]: a bridge in the test's own process ([`TestApp`]).
//! - [`process`]: the real binary as a child process ([`BridgeProcess`]) and its commands.
//! - [`store`]: SQLite files and PostgreSQL databases of one's own.
//! - [`stand_in`]: the stand-in for Jelou and what it was asked per ticket.
//! - [`metrics`]: a bridge's `/metrics`, read.
//! - [`webhook`]: Jelou's signed webhooks, posted.
//!
//! Everything is also at the crate's root: `use testkit::*;`.

pub mod app;
pub mod broker;
pub mod bus;
mod contract;
pub mod metrics;
pub mod names;
pub mod process;
pub mod stand_in;
pub mod store;
pub mod webhook;

pub use app::*;
pub use broker::*;
pub use bus::*;
pub use metrics::*;
pub use names::*;
pub use process::*;
pub use stand_in::*;
pub use store::*;
pub use webhook::*;
