//! How long-running subcommands learn they should stop.

use std::time::Duration;

/// How often a child started with `--exit-with-parent` checks its parent.
const PARENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Resolves on SIGTERM or SIGINT, or — with `exit_with_parent` — when the
/// process that started us has gone (we were re-parented). The handlers
/// are installed when it is first polled; see [`Signals`] to install them
/// earlier.
pub async fn shutdown(exit_with_parent: bool) {
    Signals::install().wait(exit_with_parent).await
}

/// SIGTERM and SIGINT handlers, installed from the moment this is made
/// (inside a tokio runtime): a signal that arrives before anyone waits is
/// kept, not left to the default action that kills the process.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Must run inside a tokio runtime (e.g. after
    /// `Runtime::enter`).
    pub fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).expect("installing a SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("installing a SIGINT handler"),
        }
    }

    /// Resolves on SIGTERM or SIGINT (also one that came before this was
    /// called), or as [`shutdown`] says with `exit_with_parent`.
    pub async fn wait(self, exit_with_parent: bool) {
        let Signals { mut term, mut int } = self;
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
}
