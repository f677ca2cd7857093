//! `--user` and `--password-stdin`: one pair of flags, global to every
//! subcommand, next to the TLS flags. With `--user NAME`, the commands
//! that talk to a coordinator (`sql`, `status`, `admin`, `cdc`, `user`,
//! `load`)
//! log in as NAME once (`trellis.v1.Auth/Login`) and send the token on
//! every request, renewing it before it expires (`trellis_client::auth`).
//!
//! The password comes from `TRELLIS_PASSWORD` or from the first line of
//! standard input (`--password-stdin`), never from a flag's value; it is
//! never printed or logged.

use std::io::{BufRead as _, Read as _};

/// The environment variable of the login password.
pub const PASSWORD_ENV: &str = "TRELLIS_PASSWORD";
/// Longest line read from standard input for a password.
const PASSWORD_LINE_BYTES_MAX: u64 = 4096;

/// The flags, global to every subcommand.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LoginArgs {
    /// Log in as this user (auth on: `trellis admin auth status`); the
    /// password comes from TRELLIS_PASSWORD or, with --password-stdin,
    /// from standard input. Without it, a client certificate names the
    /// user.
    #[arg(long, global = true, value_name = "NAME")]
    pub user: Option<String>,
    /// Read the --user password from the first line of standard input.
    #[arg(long, global = true)]
    pub password_stdin: bool,
}

impl LoginArgs {
    /// A usage message for a flag given without the other.
    pub fn misuse(&self) -> Option<String> {
        (self.password_stdin && self.user.is_none())
            .then(|| "--password-stdin is the password of --user NAME: give --user too".to_string())
    }

    /// Configures the process's login, if --user is given: reads the
    /// password.
    pub fn install(&self) -> anyhow::Result<()> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        let password = if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .take(PASSWORD_LINE_BYTES_MAX)
                .read_line(&mut line)
                .map_err(|e| anyhow::anyhow!("reading the password from standard input: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_string()
        } else {
            std::env::var(PASSWORD_ENV).unwrap_or_default()
        };
        if password.is_empty() {
            anyhow::bail!(
                "--user {user}: no password (set {PASSWORD_ENV}, or pipe it with --password-stdin)"
            );
        }
        trellis_client::auth::configure(user, password)?;
        Ok(())
    }
}

/// A client of the coordinator at `addr` for the commands that use only
/// the coordinator's services (the change feed, its cursors): through the
/// coordinator, so that a `--user` login (which the shards do not take)
/// works for them too.
pub async fn coordinator_client(addr: &str) -> trellis_client::Result<trellis_client::Client> {
    trellis_client::Client::connect_with(
        addr,
        trellis_client::Options {
            route: trellis_client::Route::Coordinator,
            ..Default::default()
        },
    )
    .await
}
