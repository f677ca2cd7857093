//! `trellis user add|passwd|rm|grant|revoke|list` and `trellis admin auth
//! enable|disable|status`: the `trellis.v1.Auth` service from the command
//! line.
//!
//! A new password is read from standard input (`--new-password-stdin`, first
//! line) or from `TRELLIS_NEW_PASSWORD`, never from a flag's value (which
//! `ps` and shell histories show), and never printed or logged.
//! `TRELLIS_NEW_PASSWORD` is not `TRELLIS_PASSWORD`: that one is the
//! password of the user a command logs in as.

use std::io::{BufRead as _, Read as _};
use std::time::Duration;

use anyhow::{Context as _, bail};
use trellis_proto::v1 as pb;

/// Deadline of every Auth call, connecting included (hashing a password
/// takes tens of milliseconds; the rest is a catalog write).
const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The environment variable a new password may come from.
const NEW_PASSWORD_ENV: &str = "TRELLIS_NEW_PASSWORD";
/// Longest line read from standard input for a password.
const PASSWORD_LINE_BYTES_MAX: u64 = 4096;

#[derive(clap::Args)]
pub struct Args {
    /// Coordinator address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr, global = true)]
    addr: String,
    #[command(subcommand)]
    command: UserCommand,
}

/// Where a new password comes from.
#[derive(clap::Args, Clone, Debug)]
struct NewPassword {
    /// Read the new password from the first line of standard input (else
    /// from TRELLIS_NEW_PASSWORD; with neither, the user logs in by client
    /// certificate only). Not --password-stdin: that one is the password
    /// of --user, who runs the command.
    #[arg(long)]
    new_password_stdin: bool,
}

#[derive(clap::Subcommand)]
enum UserCommand {
    /// Add a user (no grant yet). Its client certificate is
    /// `trellis cert create-client --name NAME`; a password is optional.
    #[command(after_help = "\
Examples:
  trellis user add alice                          (client certificate only)
  printf '%s\\n' \"$PW\" | trellis user add bob --new-password-stdin
  TRELLIS_NEW_PASSWORD=... trellis user add bob")]
    Add {
        name: String,
        #[command(flatten)]
        password: NewPassword,
    },
    /// Change a user's password (none given: password login off).
    Passwd {
        name: String,
        #[command(flatten)]
        password: NewPassword,
    },
    /// Remove a user and its grants. A token it holds works until it
    /// expires (10 minutes at most).
    Rm { name: String },
    /// Grant a role (read, write or admin) on the keys starting with
    /// --prefix (default: every key; admin only on every key).
    #[command(after_help = "\
Examples:
  trellis user grant root admin
  trellis user grant bob write --prefix a/
  trellis user grant carol read")]
    Grant {
        name: String,
        role: String,
        /// Key prefix, as text; empty or absent: every key.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Take a grant back (the same role and prefix as granted).
    Revoke {
        name: String,
        role: String,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Every user, whether it has a password, and its grants.
    List,
}

/// `trellis admin auth ...`.
#[derive(clap::Subcommand)]
pub enum AuthCommand {
    /// Require every request to authenticate (a token from --user, or a
    /// client certificate naming a user) and check its grants. Refused
    /// without TLS and while no user holds admin.
    Enable {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
    },
    /// Let every request through again.
    Disable {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
    },
    /// Whether auth is on, how many users and admins there are.
    Status {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
    },
}

async fn client(
    addr: &str,
) -> anyhow::Result<pb::auth_client::AuthClient<trellis_client::auth::Authed>> {
    let channel = trellis_net::connect(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(AUTH_CALL_TIMEOUT)
            .timeout(AUTH_CALL_TIMEOUT),
    )
    .await
    .with_context(|| format!("connecting to the coordinator at {addr}"))?;
    trellis_client::auth::login(&channel).await?;
    Ok(pb::auth_client::AuthClient::new(
        trellis_client::auth::authed(channel),
    ))
}

/// A refused call's message, with what was being done.
fn refused(doing: String) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    move |status| anyhow::anyhow!("{doing}: {}", status.message())
}

fn new_password(from: &NewPassword) -> anyhow::Result<String> {
    if from.new_password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(PASSWORD_LINE_BYTES_MAX)
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            bail!("--new-password-stdin: standard input held no password");
        }
        return Ok(password);
    }
    Ok(std::env::var(NEW_PASSWORD_ENV).unwrap_or_default())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(user(args))
}

async fn user(args: Args) -> anyhow::Result<()> {
    let mut auth = client(&args.addr).await?;
    let message = match args.command {
        UserCommand::Add { name, password } => {
            let password = new_password(&password)?;
            auth.add_user(pb::AddUserRequest {
                user: name.clone(),
                password,
            })
            .await
            .map_err(refused(format!("adding user `{name}`")))?
            .into_inner()
            .message
        }
        UserCommand::Passwd { name, password } => {
            let password = new_password(&password)?;
            auth.set_password(pb::SetPasswordRequest {
                user: name.clone(),
                password,
            })
            .await
            .map_err(refused(format!("changing the password of `{name}`")))?
            .into_inner()
            .message
        }
        UserCommand::Rm { name } => {
            auth.remove_user(pb::RemoveUserRequest { user: name.clone() })
                .await
                .map_err(refused(format!("removing user `{name}`")))?
                .into_inner()
                .message
        }
        UserCommand::Grant { name, role, prefix } => {
            auth.grant(pb::GrantRequest {
                user: name.clone(),
                role: role.clone(),
                prefix: prefix.into_bytes(),
            })
            .await
            .map_err(refused(format!("granting {role} to `{name}`")))?
            .into_inner()
            .message
        }
        UserCommand::Revoke { name, role, prefix } => {
            auth.revoke(pb::GrantRequest {
                user: name.clone(),
                role: role.clone(),
                prefix: prefix.into_bytes(),
            })
            .await
            .map_err(refused(format!("revoking {role} from `{name}`")))?
            .into_inner()
            .message
        }
        UserCommand::List => {
            let users = auth
                .list_users(pb::ListUsersRequest {})
                .await
                .map_err(refused("listing the users".to_string()))?
                .into_inner()
                .users;
            let mut out = format!("{:<24} {:<9} GRANTS\n", "USER", "PASSWORD");
            for u in users {
                let grants = u
                    .grants
                    .iter()
                    .map(|g| {
                        if g.prefix.is_empty() {
                            format!("{} on every key", g.role)
                        } else {
                            format!(
                                "{} on prefix {}",
                                g.role,
                                trellis_coordinator::authz::show(&g.prefix)
                            )
                        }
                    })
                    .collect::<Vec<_>>();
                let grants = if grants.is_empty() {
                    "(none)".to_string()
                } else {
                    grants.join(", ")
                };
                let password = if u.has_password { "yes" } else { "no" };
                out.push_str(&format!("{:<24} {password:<9} {grants}\n", u.name));
            }
            out.trim_end().to_string()
        }
    };
    println!("{message}");
    Ok(())
}

impl Args {
    /// The coordinator address this command dials (for the TLS files a
    /// running `trellis dev` offers, `crate::dev::certs`).
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }
}

impl AuthCommand {
    /// The coordinator address this command dials (for the TLS files a
    /// running `trellis dev` offers, `crate::dev::certs`).
    pub(crate) fn addr(&self) -> &str {
        match self {
            AuthCommand::Enable { addr }
            | AuthCommand::Disable { addr }
            | AuthCommand::Status { addr } => addr,
        }
    }
}

/// `trellis admin auth enable|disable|status`.
pub async fn admin_auth(command: AuthCommand) -> anyhow::Result<()> {
    let (addr, change) = match &command {
        AuthCommand::Enable { addr } => (addr, Some(true)),
        AuthCommand::Disable { addr } => (addr, Some(false)),
        AuthCommand::Status { addr } => (addr, None),
    };
    let mut auth = client(addr).await?;
    let status = match change {
        Some(enabled) => auth
            .set_auth(pb::SetAuthRequest { enabled })
            .await
            .map_err(refused(format!(
                "{} auth",
                if enabled { "enabling" } else { "disabling" }
            )))?,
        None => auth
            .auth_status(pb::AuthStatusRequest {})
            .await
            .map_err(refused("asking whether auth is on".to_string()))?,
    }
    .into_inner();
    println!(
        "auth {}; TLS {}; {} users, {} admins; a token lives {} s",
        if status.enabled { "on" } else { "off" },
        if status.tls { "on" } else { "off" },
        status.users,
        status.admins,
        status.token_lifetime_s
    );
    Ok(())
}
