//! Session tokens, pure: what `Login` hands a user whose password it
//! checked, and what every later request carries instead of the password
//! (`authorization: Bearer <token>`).
//!
//! A token says "user U of cluster C holds grants G until T", signed with
//! HMAC-SHA256 under a random secret of the cluster (kept in its
//! catalog). Checking one is a hash over a few kilobytes at most: no
//! password hashing per request (the cost etcd once paid, etcd#3223), no
//! catalog read. The price: a token keeps the grants it was minted with
//! until it expires, [`TOKEN_LIFETIME`] at most — revoking a grant or
//! removing a user takes effect for password logins when their token
//! expires.
//!
//! Wire form: `trellis1.<hex payload>.<hex mac>`, the payload being
//! cluster id (u64), expiry (u64, Unix seconds), user (u8 length, bytes),
//! grants (u8 count, then each role u8, prefix u16 length, bytes), all
//! big-endian.
//!
//! This module does no IO and reads no clock (the caller passes `now`);
//! it never logs, and a token's text never appears in its errors.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::authz::{GRANT_PREFIX_BYTES_MAX, GRANTS_PER_USER_MAX, Grant, Grants, Role};

/// How long a token lives: a revoked user's token still works for up to
/// this long.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// A client logs in again when its token has less than this left, so a
/// request in flight never carries an expired one.
pub const TOKEN_REFRESH_BEFORE: Duration = Duration::from_secs(2 * 60);
const _: () = assert!(TOKEN_REFRESH_BEFORE.as_secs() * 2 < TOKEN_LIFETIME.as_secs());
/// Bytes of the cluster's token secret.
pub const SECRET_BYTES: usize = 32;
/// Longest user name in a token (the name rules allow 64).
const USER_BYTES_MAX: usize = 255;
/// Longest token, in bytes of text: it travels in one HTTP/2 header,
/// whose whole list servers cap at 16 KiB by default.
pub const TOKEN_BYTES_MAX: usize = PREFIX.len() + 2 * (PAYLOAD_BYTES_MAX + MAC_BYTES) + 1;
const PAYLOAD_BYTES_MAX: usize =
    8 + 8 + 1 + USER_BYTES_MAX + 1 + GRANTS_PER_USER_MAX * (1 + 2 + GRANT_PREFIX_BYTES_MAX);
const MAC_BYTES: usize = 32;
const _: () = assert!(TOKEN_BYTES_MAX <= 12 * 1024);
const _: () = assert!(GRANTS_PER_USER_MAX <= u8::MAX as usize);
const _: () = assert!(GRANT_PREFIX_BYTES_MAX <= u16::MAX as usize);

const PREFIX: &str = "trellis1.";

/// Why a token is refused. None of the messages holds the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a Trellis token ({0}): log in again (trellis --user)")]
    Malformed(&'static str),
    #[error(
        "the token was issued by another cluster ({theirs:016x}, this is {ours:016x}): log in to \
         this cluster"
    )]
    ForeignCluster { theirs: u64, ours: u64 },
    #[error("the token's signature does not match this cluster's secret: log in again")]
    BadSignature,
    #[error("the token of user `{user}` expired {ago_s} s ago: log in again")]
    Expired { user: String, ago_s: u64 },
}

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub cluster: u64,
    /// Unix seconds after which the token is refused.
    pub expires_unix_s: u64,
    pub grants: Grants,
}

/// Mints the token of `claims` under `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let payload = encode(claims);
    format!(
        "{PREFIX}{}.{}",
        hex::encode(&payload),
        hex::encode(sign(secret, &payload))
    )
}

/// The claims of `token` if it is this cluster's (`cluster`, `secret`),
/// signed, and not expired at `now_unix_s`.
pub fn verify(
    secret: &[u8],
    cluster: u64,
    now_unix_s: u64,
    token: &str,
) -> Result<Claims, TokenError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Malformed("too long"));
    }
    let rest = token
        .strip_prefix(PREFIX)
        .ok_or(TokenError::Malformed("no trellis1. prefix"))?;
    let (payload, mac) = rest
        .split_once('.')
        .ok_or(TokenError::Malformed("no signature"))?;
    let payload = hex::decode(payload).map_err(|_| TokenError::Malformed("payload not hex"))?;
    let mac = hex::decode(mac).map_err(|_| TokenError::Malformed("signature not hex"))?;
    // The cluster is read first, for the message only: the signature
    // below is what proves anything, and is checked before the rest is
    // decoded.
    let theirs = payload
        .first_chunk::<8>()
        .map(|b| u64::from_be_bytes(*b))
        .ok_or(TokenError::Malformed("payload cut short"))?;
    if theirs != cluster {
        return Err(TokenError::ForeignCluster {
            theirs,
            ours: cluster,
        });
    }
    let mut check = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    check.update(&payload);
    check
        .verify_slice(&mac)
        .map_err(|_| TokenError::BadSignature)?;
    let claims = decode(&payload)?;
    if now_unix_s >= claims.expires_unix_s {
        return Err(TokenError::Expired {
            user: claims.grants.user().to_string(),
            ago_s: now_unix_s - claims.expires_unix_s,
        });
    }
    Ok(claims)
}

fn sign(secret: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(payload);
    mac.finalize().into_bytes().to_vec()
}

fn encode(claims: &Claims) -> Vec<u8> {
    let user = claims.grants.user().as_bytes();
    let user = &user[..user.len().min(USER_BYTES_MAX)];
    let mut out = Vec::with_capacity(PAYLOAD_BYTES_MAX);
    out.extend_from_slice(&claims.cluster.to_be_bytes());
    out.extend_from_slice(&claims.expires_unix_s.to_be_bytes());
    out.push(user.len() as u8);
    out.extend_from_slice(user);
    let grants = claims.grants.grants();
    out.push(grants.len() as u8);
    for grant in grants {
        out.push(match grant.role() {
            Role::Read => 0,
            Role::Write => 1,
            Role::Admin => 2,
        });
        out.extend_from_slice(&(grant.prefix().len() as u16).to_be_bytes());
        out.extend_from_slice(grant.prefix());
    }
    out
}

fn decode(mut b: &[u8]) -> Result<Claims, TokenError> {
    const SHORT: TokenError = TokenError::Malformed("payload cut short");
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], TokenError> {
        if b.len() < n {
            return Err(SHORT);
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head)
    }
    let u64_of = |s: &[u8]| u64::from_be_bytes(s.try_into().expect("8 bytes"));
    let cluster = u64_of(take(&mut b, 8)?);
    let expires_unix_s = u64_of(take(&mut b, 8)?);
    let user_len = take(&mut b, 1)?[0] as usize;
    let user = std::str::from_utf8(take(&mut b, user_len)?)
        .map_err(|_| TokenError::Malformed("user not UTF-8"))?
        .to_string();
    let count = take(&mut b, 1)?[0] as usize;
    let mut grants = Vec::with_capacity(count.min(GRANTS_PER_USER_MAX));
    for _ in 0..count {
        let role = match take(&mut b, 1)?[0] {
            0 => Role::Read,
            1 => Role::Write,
            2 => Role::Admin,
            _ => return Err(TokenError::Malformed("unknown role")),
        };
        let len = take(&mut b, 2)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let prefix = take(&mut b, len)?.to_vec();
        grants.push(Grant::new(role, prefix).map_err(|_| TokenError::Malformed("bad grant"))?);
    }
    if !b.is_empty() {
        return Err(TokenError::Malformed("trailing bytes"));
    }
    let grants = Grants::new(user, grants).map_err(|_| TokenError::Malformed("too many grants"))?;
    Ok(Claims {
        cluster,
        expires_unix_s,
        grants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const CLUSTER: u64 = 0x1234;
    const NOW: u64 = 1_000_000;

    fn claims() -> Claims {
        Claims {
            cluster: CLUSTER,
            expires_unix_s: NOW + TOKEN_LIFETIME.as_secs(),
            grants: Grants::new(
                "alice",
                vec![
                    Grant::new(Role::Write, b"a/".to_vec()).expect("grant"),
                    Grant::new(Role::Read, vec![0xff, 0]).expect("grant"),
                ],
            )
            .expect("grants"),
        }
    }

    #[test]
    fn a_minted_token_verifies_to_its_claims_until_it_expires() {
        let token = mint(SECRET, &claims());
        assert_eq!(verify(SECRET, CLUSTER, NOW, &token), Ok(claims()));
        let end = claims().expires_unix_s;
        assert_eq!(
            verify(SECRET, CLUSTER, end - 1, &token).map(|c| c.grants),
            Ok(claims().grants)
        );
        assert_eq!(
            verify(SECRET, CLUSTER, end + 5, &token),
            Err(TokenError::Expired {
                user: "alice".into(),
                ago_s: 5
            })
        );
    }

    #[test]
    fn another_clusters_token_or_secret_is_refused() {
        let token = mint(SECRET, &claims());
        assert_eq!(
            verify(SECRET, CLUSTER + 1, NOW, &token),
            Err(TokenError::ForeignCluster {
                theirs: CLUSTER,
                ours: CLUSTER + 1
            })
        );
        // Same cluster id, another secret (a catalog made anew).
        let other = b"another secret of thirty-two b..";
        assert_eq!(
            verify(other, CLUSTER, NOW, &token),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let token = mint(SECRET, &claims());
        // Give oneself admin: change the first grant's role byte.
        let (payload, mac) = token[PREFIX.len()..].split_once('.').expect("two parts");
        let mut bytes = hex::decode(payload).expect("hex");
        let role_at = 8 + 8 + 1 + "alice".len() + 1;
        bytes[role_at] = 2;
        let forged = format!("{PREFIX}{}.{mac}", hex::encode(&bytes));
        assert_eq!(
            verify(SECRET, CLUSTER, NOW, &forged),
            Err(TokenError::BadSignature)
        );
        for junk in [
            "",
            "Bearer x",
            "trellis1.zz.00",
            "trellis1.00",
            "trellis1.0011.00",
        ] {
            assert!(
                matches!(
                    verify(SECRET, CLUSTER, NOW, junk),
                    Err(TokenError::Malformed(_))
                ),
                "{junk}"
            );
        }
        let long = "x".repeat(TOKEN_BYTES_MAX + 1);
        assert_eq!(
            verify(SECRET, CLUSTER, NOW, &long),
            Err(TokenError::Malformed("too long"))
        );
    }

    #[test]
    fn the_largest_token_fits_the_bound() {
        let grants = (0..GRANTS_PER_USER_MAX)
            .map(|i| Grant::new(Role::Write, vec![i as u8; GRANT_PREFIX_BYTES_MAX]).expect("grant"))
            .collect();
        let big = Claims {
            grants: Grants::new("u".repeat(64), grants).expect("grants"),
            ..claims()
        };
        let token = mint(SECRET, &big);
        assert!(token.len() <= TOKEN_BYTES_MAX, "{}", token.len());
        assert_eq!(verify(SECRET, CLUSTER, NOW, &token), Ok(big));
    }
}
