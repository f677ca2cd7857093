//! How long-running subcommands learn they should stop.

use std::time::Duration;

/// How often a child started with `--exit-with-parent` checks its parent.
const PARENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Resolves on SIGTERM or SIGINT, or — with `exit_with_parent` — when the
/// process that started us has gone (we were re-parented).
pub async fn shutdown(exit_with_parent: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let parent_gone = async {
        if !exit_with_parent {
            return std::future::pending().await;
        }
        let parent = std::os::unix::process::parent_id();
        loop {
            tokio::time::sleep(PARENT_CHECK_INTERVAL).await;
            if std::os::unix::process::parent_id() != parent {
                return;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        () = parent_gone => tracing::warn!("parent process exited: shutting down"),
    }
}
