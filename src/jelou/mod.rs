//! Jelou's external-support API: the client ([`client`]) and what it reads of an answer
//! (`answer`), what its failures mean
//! ([`error`]), retries with backoff ([`retry`]), the gate every call passes (`Retry-After`,
//! circuit breaker, caps: [`gate`]), and a local stand-in ([`mock`]).

mod answer;
pub mod client;
pub mod error;
pub mod gate;
pub mod mock;
pub mod retry;

pub use client::{Closed, Endpoint, JelouClient, Started};
pub use error::JelouError;
