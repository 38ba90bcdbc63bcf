//! Fault scenarios: the real `jelou-bridge` binary as a child process, the real broker, a
//! real HTTP stand-in for Jelou, and a fault caused on purpose (`kill -9`, a broker restart,
//! Jelou down, SIGTERM, two processes on one store, duplicates, a poison message, an upgrade
//! from the previous release). Each checks the contract's delivery semantics: nothing lost,
//! nothing started twice.
//!
//! One scenario restarts RabbitMQ, which would disturb any other test using the broker, so
//! this binary runs alone and one test at a time: `scripts/test.sh` runs it after the parallel
//! tests with `--test-threads=1`. By hand, next to other users of the broker, hold its lock
//! exclusively: `flock -x /tmp/jb-broker.lock cargo test --test faults -- --test-threads=1`.
//!
//! The `cluster` scenarios stop nodes of a private 3-node cluster (`scripts/cluster.sh`, which
//! they start when it is not running), never the main broker. Every scenario that stops a
//! broker or a node also holds `harness::broker_lock` until it is back, so two of them never
//! overlap inside this binary even without `--test-threads=1`.
//!
//! The `upgrade` scenarios also run the previous release's binary, named by `JB_PREVIOUS_BIN`
//! (`scripts/build-previous.sh` builds it and prints its path; `scripts/test.sh` does both).

mod cluster_kit;
mod harness;
mod observer;

mod broker_restart;
mod chaos;
mod close_crash;
mod cluster;
mod duplicates;
mod jelou_down;
mod kill9;
mod poison;
mod sigterm;
mod skewed_clock;
mod two_processes;
mod upgrade;
