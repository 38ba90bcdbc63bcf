//! Integration tests against a real RabbitMQ and a real HTTP stand-in for Jelou. Every test
//! has its own exchanges, queues and store, so they run in parallel.

mod cli;
mod commands;
mod evidence;
mod failures;
mod health;
mod limits;
mod messages;
mod monitoring;
mod ownership;
mod pressure;
mod replay;
mod schema;
mod sharding;
mod store;
mod tickets;
mod tls;
mod trace;
mod webhook;
