//! Passwords and the rules of user management (issue 23): hashing a
//! password into a PHC string with argon2id and checking one, and the
//! decisions that keep a cluster from locking itself out — auth is turned
//! on only over TLS and only while some user holds `admin`, and the last
//! admin cannot be removed or lose `admin` while auth is on.
//!
//! The decisions are pure functions. The catalog applies
//! [`check_keeps_an_admin`] inside the one transaction that reads the
//! users and the switch and makes the change, so racing changes (two
//! admins removing each other through two coordinators) are judged one
//! after the other. Hashing is CPU work (tens of milliseconds by design)
//! that callers run off the async workers. This
//! module never logs a password or a hash, and never decides a request's
//! permissions ([`trellis_txn::authz`] does).

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore as _;
use trellis_txn::authz::Role;

use crate::catalog::UserRow;

/// argon2id memory cost, in KiB (19 MiB: OWASP's first recommended
/// setting for argon2id).
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// argon2id passes over the memory.
pub const ARGON2_ITERATIONS: u32 = 2;
/// argon2id lanes: one, as a login holds one core.
pub const ARGON2_LANES: u32 = 1;
/// Bytes of random salt per password.
pub const SALT_BYTES: usize = 16;
/// Longest password accepted, in bytes: hashing is bounded work.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Shortest password accepted, in bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None)
        .expect("the argon2 parameters are within argon2's bounds");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks a new password's length; the message never holds it.
pub fn check_password_rules(password: &str) -> Result<(), String> {
    if password.len() < PASSWORD_BYTES_MIN || password.len() > PASSWORD_BYTES_MAX {
        return Err(format!(
            "the password is {} bytes long: it must be {PASSWORD_BYTES_MIN} to \
             {PASSWORD_BYTES_MAX}",
            password.len()
        ));
    }
    Ok(())
}

/// The PHC string (`$argon2id$v=19$m=...`) of `password` with a fresh
/// random salt. CPU-bound: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, String> {
    check_password_rules(password)?;
    let mut salt = [0u8; SALT_BYTES];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| format!("encoding a salt: {e}"))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// Whether `password` is the one `phc` was made from (with the
/// parameters `phc` names, so hashes made before a change of the
/// constants still check). CPU-bound: call from a blocking thread.
pub fn check_password(phc: &str, password: &str) -> bool {
    if password.len() > PASSWORD_BYTES_MAX {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    argon2()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Why a change to users, grants or the auth switch is refused: it would
/// lock everyone out of managing the cluster.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockOut {
    /// `auth enable` asked of a coordinator without TLS.
    #[error(
        "refusing to enable auth on a coordinator without TLS: passwords and tokens would cross \
         the network in plaintext; start the coordinators with --tls-ca, --tls-cert and --tls-key"
    )]
    Plaintext,
    /// `auth enable` while no user holds `admin`.
    #[error(
        "refusing to enable auth: no user holds admin, so nobody could manage the cluster \
         afterwards; first `trellis user add NAME` and `trellis user grant NAME admin`"
    )]
    NoAdmin,
    /// Removing the last admin, or its `admin`, while auth is on.
    #[error(
        "refusing: `{user}` is the last user holding admin and auth is on, so nobody could \
         manage the cluster afterwards; grant admin to another user first (or `trellis admin \
         auth disable`)"
    )]
    LastAdmin { user: String },
}

/// Whether the coordinator asked may turn auth on: only over TLS
/// (passwords and tokens would otherwise cross the network in the clear).
/// A property of the coordinator, checked before the catalog is asked.
pub fn check_enable_over_tls(tls_on: bool) -> Result<(), LockOut> {
    if tls_on {
        Ok(())
    } else {
        Err(LockOut::Plaintext)
    }
}

/// A change to the catalog that could leave auth on with no admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// `user rm NAME`.
    RemoveUser(&'a str),
    /// `user revoke NAME ROLE` (only `admin` can lock anyone out).
    Revoke(&'a str, Role),
    /// `auth enable`.
    Enable,
}

/// Whether `change`, made to the catalog holding `users` with auth
/// `enabled`, keeps some admin while auth is on. The catalog calls this
/// inside the transaction that makes the change, on what that transaction
/// read, so two changes racing each other are judged one after the other.
///
/// Refuses only a change that takes away the last admin or turns auth on
/// without one: removing someone else from a catalog that (against this
/// rule, by hand) has auth on and no admin stays possible.
pub fn check_keeps_an_admin(
    enabled: bool,
    users: &[UserRow],
    change: Change<'_>,
) -> Result<(), LockOut> {
    let target = match change {
        Change::Enable => {
            return if users.iter().any(holds_admin) {
                Ok(())
            } else {
                Err(LockOut::NoAdmin)
            };
        }
        Change::Revoke(_, role) if role != Role::Admin => return Ok(()),
        Change::RemoveUser(name) | Change::Revoke(name, _) => name,
    };
    let others = users.iter().filter(|u| u.name != target).any(holds_admin);
    let target_is_admin = users.iter().any(|u| u.name == target && holds_admin(u));
    if enabled && target_is_admin && !others {
        return Err(LockOut::LastAdmin {
            user: target.to_string(),
        });
    }
    Ok(())
}

fn holds_admin(user: &UserRow) -> bool {
    user.grants.iter().any(|g| g.role() == Role::Admin)
}

#[cfg(test)]
mod tests {
    use trellis_txn::authz::Grant;

    use super::*;

    fn user(name: &str, roles: &[Role]) -> UserRow {
        UserRow {
            name: name.to_string(),
            password_hash: None,
            grants: roles
                .iter()
                .map(|r| Grant::new(*r, Vec::new()).expect("grant"))
                .collect(),
        }
    }

    #[test]
    fn a_password_checks_against_its_hash_only() {
        let phc = hash_password("correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(check_password(&phc, "correct horse"));
        assert!(!check_password(&phc, "correct horsf"));
        assert!(!check_password("not a phc string", "correct horse"));
        // A fresh salt each time.
        assert_ne!(phc, hash_password("correct horse").expect("hash"));
        let err = hash_password("short").expect_err("too short");
        assert!(!err.contains("short\""), "{err}");
        assert!(err.contains("8 to 1024"), "{err}");
    }

    #[test]
    fn auth_is_enabled_only_over_tls_with_an_admin() {
        let admin = [user("root", &[Role::Admin])];
        assert_eq!(check_enable_over_tls(true), Ok(()));
        let err = check_enable_over_tls(false).expect_err("plaintext");
        assert!(err.to_string().contains("without TLS"), "{err}");
        assert_eq!(check_keeps_an_admin(false, &admin, Change::Enable), Ok(()));
        let err = check_keeps_an_admin(false, &[user("bob", &[Role::Write])], Change::Enable)
            .expect_err("no admin");
        assert_eq!(err, LockOut::NoAdmin);
        assert!(err.to_string().contains("no user holds admin"), "{err}");
        assert!(check_keeps_an_admin(false, &[], Change::Enable).is_err());
        // Enabling again asks the same.
        assert!(check_keeps_an_admin(true, &[], Change::Enable).is_err());
    }

    #[test]
    fn the_last_admin_stays_while_auth_is_on() {
        let one = [user("root", &[Role::Admin]), user("bob", &[Role::Read])];
        let err = check_keeps_an_admin(true, &one, Change::RemoveUser("root")).expect_err("last");
        assert_eq!(
            err,
            LockOut::LastAdmin {
                user: "root".to_string()
            }
        );
        assert!(
            err.to_string()
                .contains("`root` is the last user holding admin"),
            "{err}"
        );
        assert!(check_keeps_an_admin(true, &one, Change::Revoke("root", Role::Admin)).is_err());
        // Taking away less than admin, or from someone else, or with auth off.
        assert_eq!(
            check_keeps_an_admin(true, &one, Change::Revoke("root", Role::Write)),
            Ok(())
        );
        assert_eq!(
            check_keeps_an_admin(false, &one, Change::RemoveUser("root")),
            Ok(())
        );
        assert_eq!(
            check_keeps_an_admin(true, &one, Change::RemoveUser("bob")),
            Ok(())
        );
        assert_eq!(
            check_keeps_an_admin(true, &one, Change::RemoveUser("nobody")),
            Ok(())
        );
        let two = [user("root", &[Role::Admin]), user("ops", &[Role::Admin])];
        assert_eq!(
            check_keeps_an_admin(true, &two, Change::RemoveUser("root")),
            Ok(())
        );
        assert_eq!(
            check_keeps_an_admin(true, &two, Change::Revoke("ops", Role::Admin)),
            Ok(())
        );
        // Auth on with no admin at all (made by hand): others may still go.
        let none = [user("bob", &[Role::Read])];
        assert_eq!(
            check_keeps_an_admin(true, &none, Change::RemoveUser("bob")),
            Ok(())
        );
    }
}
