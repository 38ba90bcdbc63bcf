//! Stopping: SIGINT or SIGTERM cancels a [`CancellationToken`] that the daemon (and
//! `mock-jelou`) stop on, gracefully; in-flight work is then drained within
//! `shutdown.grace` ([`drain`]); a second signal exits at once, for an operator who will not
//! wait for the drain.
//!
//! The signal is one trigger among others: [`crate::app::Application::run_until_stopped`]
//! takes the token as a parameter, so tests cancel it themselves.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancels `shutdown` on SIGINT or SIGTERM; a second signal exits at once.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("signal received: stopping (a second signal exits at once)");
    shutdown.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// The next SIGINT or SIGTERM (Ctrl-C elsewhere).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Lets the work `tracker` follows finish, for up to `grace`. What is still running then is
/// abandoned: its deliveries were not acked, so the broker gives them back when the
/// connection closes, and the store absorbs the redo.
pub async fn drain(tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight work did not finish in time; it goes back to the queue"
        );
    }
}
