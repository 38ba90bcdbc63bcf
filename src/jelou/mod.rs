//! Jelou's external-support API: the client ([`client`]), what its failures mean
//! ([`error`]), retries with backoff ([`retry`]), and a local stand-in ([`mock`]).

pub mod client;
pub mod error;
pub mod mock;
pub mod retry;

pub use client::{Closed, Endpoint, JelouClient, Started};
pub use error::JelouError;
