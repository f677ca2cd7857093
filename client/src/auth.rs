//! Password login for the client side (`--user`): log in once with
//! `trellis.v1.Auth/Login`, attach `authorization: Bearer <token>` to every
//! request made through an [`authed`] channel (and every shard request of
//! the direct route, [`credentials`]), and log in again before
//! the token expires.
//!
//! One user per process ([`configure`], like the process's TLS identity):
//! the token is process-wide, so every client and every channel of a
//! process speak for that user. The password stays in memory only; it is
//! never logged, and neither is the token.

use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use trellis_proto::v1 as pb;
use trellis_txn::router::{Credentials, Link};
use trellis_txn::token::TOKEN_REFRESH_BEFORE;

use crate::{Error, Result};

/// Deadline of one login call (the server hashes the password: tens of
/// milliseconds, more on a busy machine).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before trying a failed background refresh again.
pub const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// Who the process logs in as.
struct Login {
    user: String,
    password: String,
}

static CREDENTIALS: OnceLock<Login> = OnceLock::new();
/// The `authorization` header's value and when its token expires (Unix
/// seconds).
static TOKEN: RwLock<Option<(MetadataValue<tonic::metadata::Ascii>, u64)>> = RwLock::new(None);
/// Set once the background refresh runs.
static REFRESHING: OnceLock<()> = OnceLock::new();

/// Makes every later [`login`] log in as `user` with `password`. Once per
/// process; a second call is refused.
pub fn configure(user: &str, password: String) -> Result<()> {
    if user.is_empty() {
        return Err(Error::InvalidArgument(
            "--user: the user name is empty".into(),
        ));
    }
    CREDENTIALS
        .set(Login {
            user: user.to_string(),
            password,
        })
        .map_err(|_| Error::InvalidArgument("a login user is already configured".into()))
}

/// The user [`configure`] set, if any.
pub fn user() -> Option<&'static str> {
    CREDENTIALS.get().map(|c| c.user.as_str())
}

/// When to log in again for a token expiring at `expires_unix_s`: at
/// [`TOKEN_REFRESH_BEFORE`] before it, and never before `now_unix_s`.
pub fn refresh_at(expires_unix_s: u64, now_unix_s: u64) -> u64 {
    expires_unix_s
        .saturating_sub(TOKEN_REFRESH_BEFORE.as_secs())
        .max(now_unix_s)
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Logs in through `channel` if a user is configured and no fresh token
/// is held, and keeps the token fresh in the background from then on.
/// Without [`configure`], does nothing.
pub async fn login(channel: &Channel) -> Result<()> {
    let Some(credentials) = CREDENTIALS.get() else {
        return Ok(());
    };
    let fresh = TOKEN
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|(_, expires)| refresh_at(*expires, 0) > now_unix_s());
    if fresh {
        return Ok(());
    }
    let expires = login_now(channel, credentials).await?;
    if REFRESHING.set(()).is_ok() {
        tokio::spawn(refresh(channel.clone(), expires));
    }
    Ok(())
}

async fn login_now(channel: &Channel, credentials: &Login) -> Result<u64> {
    let mut auth = pb::auth_client::AuthClient::new(channel.clone());
    let mut request = tonic::Request::new(pb::LoginRequest {
        user: credentials.user.clone(),
        password: credentials.password.clone(),
    });
    request.set_timeout(LOGIN_TIMEOUT);
    let response = auth
        .login(request)
        .await
        .map_err(|status| Error::Server {
            code: status.code(),
            message: format!("logging in as `{}`: {}", credentials.user, status.message()),
        })?
        .into_inner();
    let header = format!("Bearer {}", response.token)
        .parse()
        .map_err(|_| Error::Server {
            code: tonic::Code::Internal,
            message: "the server's token is not ASCII".into(),
        })?;
    *TOKEN.write().unwrap_or_else(|p| p.into_inner()) = Some((header, response.expires_unix_s));
    Ok(response.expires_unix_s)
}

/// Logs in again before each token expires, forever (until the runtime
/// stops); a failure is retried after [`REFRESH_RETRY`], and requests
/// keep the old token until it expires.
async fn refresh(channel: Channel, mut expires: u64) {
    let Some(credentials) = CREDENTIALS.get() else {
        return;
    };
    loop {
        let wait = refresh_at(expires, now_unix_s()).saturating_sub(now_unix_s());
        tokio::time::sleep(Duration::from_secs(wait)).await;
        match login_now(&channel, credentials).await {
            Ok(next) => expires = next,
            Err(err) => {
                eprintln!("warning: cannot renew the login token: {err}");
                tokio::time::sleep(REFRESH_RETRY).await;
            }
        }
    }
}

/// The `authorization` header of the process's token, if it holds one.
pub fn bearer_header() -> Option<MetadataValue<tonic::metadata::Ascii>> {
    TOKEN
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|(header, _)| header.clone())
}

/// What every request of the process carries: the token, if any.
pub fn credentials() -> Credentials {
    Credentials::bearer(bearer_header)
}

/// A channel whose requests carry the token.
pub type Authed = Link;

/// `channel` with the token attached to every request.
pub fn authed(channel: Channel) -> Authed {
    trellis_txn::router::link(channel, credentials())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_before_it_expires_never_in_the_past() {
        let before = TOKEN_REFRESH_BEFORE.as_secs();
        assert_eq!(refresh_at(1000 + before, 0), 1000);
        assert_eq!(refresh_at(1000 + before, 1200), 1200);
        assert_eq!(refresh_at(10, 5), 5);
    }
}
