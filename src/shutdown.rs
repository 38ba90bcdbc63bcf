//! Stopping on a signal: SIGINT or SIGTERM cancels a [`CancellationToken`] that the daemon
//! (and `mock-jelou`) stop on, gracefully; a second signal exits at once, for an operator
//! who will not wait for the drain.
//!
//! The signal is one trigger among others: [`crate::app::Application::run_until_stopped`]
//! takes the token as a parameter, so tests cancel it themselves.

use tokio_util::sync::CancellationToken;

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
