//! The catalog's users, grants and auth switch (issue 23): the storage of
//! who may log in (a name, a password's PHC string or none) and what they
//! may do (roles on key prefixes), and whether the cluster asks at all,
//! with the secret that signs its tokens.
//!
//! Stores what it is given: it never hashes or checks a password, never
//! decides a request ([`trellis_txn::authz`] does), and never logs a
//! password hash or the secret. It keeps one invariant of its own, by
//! [`crate::auth`]'s pure rule: auth is never left on with no user holding
//! `admin`. Removing a user, revoking a grant and turning auth on each
//! run in one transaction that holds the auth switch's row (see
//! `Dialect::lock_auth_settings`; in memory, the catalog's lock), reads
//! the switch and every user with its grants, applies
//! [`check_keeps_an_admin`], and only then writes — so two such changes
//! racing through two coordinators are judged one after the other.

use rand::RngCore as _;
use trellis_txn::authz::{GRANTS_PER_USER_MAX, Grant, Role};
use trellis_txn::token::SECRET_BYTES;

use super::codec::to_i64;
use super::{Catalog, CatalogError, db, to_completion};
use crate::auth::{Change, check_keeps_an_admin};

/// Most users the catalog keeps; past this, adding one is refused.
pub const USERS_MAX: u64 = 1024;
/// Longest PHC string of a password hash (the table's CHECK says the
/// same); argon2id's with our parameters is about 100.
pub const PASSWORD_HASH_BYTES_MAX: usize = 512;

/// A user as the catalog stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    /// The password's PHC string; `None`: certificate login only.
    pub password_hash: Option<String>,
    /// Sorted, at most [`GRANTS_PER_USER_MAX`].
    pub grants: Vec<Grant>,
}

impl std::fmt::Debug for UserRow {
    // Never prints the hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("name", &self.name)
            .field("has_password", &self.password_hash.is_some())
            .field("grants", &self.grants)
            .finish()
    }
}

/// Whether requests must authenticate, and the token secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthSettings {
    pub enabled: bool,
    pub secret: [u8; SECRET_BYTES],
}

impl std::fmt::Debug for AuthSettings {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

fn check_user(name: &str) -> Result<(), CatalogError> {
    trellis_net::tls::check_name(name)
        .map_err(|why| CatalogError::Invalid(format!("refusing the user name: {why}")))
}

fn check_hash(hash: Option<&str>) -> Result<(), CatalogError> {
    match hash {
        Some(h) if h.is_empty() || h.len() > PASSWORD_HASH_BYTES_MAX => {
            Err(CatalogError::Invalid(format!(
                "refusing a password hash of {} bytes: 1 to {PASSWORD_HASH_BYTES_MAX}",
                h.len()
            )))
        }
        _ => Ok(()),
    }
}

fn unknown_user(name: &str) -> CatalogError {
    CatalogError::Invalid(format!(
        "user `{name}` does not exist: `trellis user list` lists the users"
    ))
}

/// A grant as stored: role text and prefix; refuses one that breaks the
/// grant rules (never repaired).
fn grant_of(user: &str, role: &str, prefix: Vec<u8>) -> Result<Grant, CatalogError> {
    let role: Role = role
        .parse()
        .map_err(|why| CatalogError::Corrupt(format!("a grant of user `{user}`: {why}")))?;
    Grant::new(role, prefix)
        .map_err(|why| CatalogError::Corrupt(format!("a grant of user `{user}`: {why}")))
}

/// Users and their grants from the rows of `users` and `grants`, each
/// sorted by user.
fn join(
    users: Vec<(String, Option<String>)>,
    grants: Vec<(String, String, Vec<u8>)>,
) -> Result<Vec<UserRow>, CatalogError> {
    let mut rows: Vec<UserRow> = users
        .into_iter()
        .map(|(name, password_hash)| UserRow {
            name,
            password_hash,
            grants: Vec::new(),
        })
        .collect();
    for (user, role, prefix) in grants {
        let grant = grant_of(&user, &role, prefix)?;
        match rows.binary_search_by(|r| r.name.as_str().cmp(&user)) {
            Ok(i) => rows[i].grants.push(grant),
            Err(_) => {
                return Err(CatalogError::Corrupt(format!(
                    "a grant names user `{user}`, who does not exist"
                )));
            }
        }
    }
    for row in &mut rows {
        if row.grants.len() > GRANTS_PER_USER_MAX {
            return Err(CatalogError::Corrupt(format!(
                "user `{}` holds {} grants, more than {GRANTS_PER_USER_MAX}",
                row.name,
                row.grants.len()
            )));
        }
        row.grants.sort();
    }
    Ok(rows)
}

/// The rows a change's transaction read: the auth switch (`None`: no
/// row), the users and the grants.
type ChangeRows = (
    Option<i64>,
    Vec<(String, Option<String>)>,
    Vec<(String, String, Vec<u8>)>,
);

/// Judges `change` by the lock-out rule on what its transaction read.
fn judge((enabled, users, grants): ChangeRows, change: Change<'_>) -> Result<(), CatalogError> {
    // The caller wrote the row before it began (`auth_settings`), and no
    // one deletes it.
    let enabled = enabled
        .ok_or_else(|| CatalogError::Corrupt("the auth_settings row vanished".to_string()))?;
    check_keeps_an_admin(enabled != 0, &join(users, grants)?, change)?;
    Ok(())
}

/// In SQL transaction `$tx` begun with `$dialect.begin_write`: holds the
/// auth switch's row until `$tx` ends, reads it with every user and grant,
/// and judges `$change`; a refused change rolls `$tx` back and returns the
/// refusal from the enclosing function.
macro_rules! judge_in_tx {
    ($tx:ident, $dialect:ident, $change:expr) => {{
        let enabled: Option<i64> = sqlx::query_scalar($dialect.lock_auth_settings)
            .fetch_optional(&mut *$tx)
            .await
            .map_err(db("locking the auth settings"))?;
        let users: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT name, password_hash FROM users ORDER BY name")
                .fetch_all(&mut *$tx)
                .await
                .map_err(db("listing the users"))?;
        let grants: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT user_name, role, prefix FROM grants ORDER BY user_name, role, prefix",
        )
        .fetch_all(&mut *$tx)
        .await
        .map_err(db("listing the grants"))?;
        if let Err(refused) = judge((enabled, users, grants), $change) {
            $tx.rollback()
                .await
                .map_err(db("rolling back a refused change"))?;
            return Err(refused);
        }
    }};
}

/// The same as [`judge_in_tx!`] on the in-memory tables, under their lock.
fn judge_in_memory(
    memory: &super::memory::MemoryDb,
    change: Change<'_>,
) -> Result<(), CatalogError> {
    judge(
        (
            memory.auth.as_ref().map(|(enabled, _)| *enabled),
            memory
                .users
                .iter()
                .map(|(n, h)| (n.clone(), h.clone()))
                .collect(),
            memory.grants.iter().cloned().collect(),
        ),
        change,
    )
}

impl Catalog {
    /// Adds user `name` with the password hash `password_hash` (a PHC
    /// string; `None`: certificate login only) and no grant. Refuses a
    /// bad name, a user that exists, and more than [`USERS_MAX`] users.
    pub async fn add_user(
        &self,
        name: &str,
        password_hash: Option<&str>,
    ) -> Result<(), CatalogError> {
        check_user(name)?;
        check_hash(password_hash)?;
        let users_max = to_i64(USERS_MAX, "the most users kept")?;
        let added = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO users (name, password_hash) \
                 SELECT $1, $2 WHERE (SELECT count(*) FROM users) < $3 \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(password_hash)
            .bind(users_max)
            .execute(pool)
            .await
            .map_err(db(format!("adding user `{name}`")))?
            .rows_affected()
                == 1
        }, memory => {
            let fits = (memory.users.len() as u64) < USERS_MAX;
            fits && !memory.users.contains_key(name) && {
                memory.users.insert(name.to_string(), password_hash.map(str::to_string));
                true
            }
        });
        if added {
            tracing::info!(user = name, "added a user to the catalog");
            return Ok(());
        }
        if self.user(name).await?.is_some() {
            Err(CatalogError::Invalid(format!(
                "user `{name}` already exists (`trellis user passwd` changes a password)"
            )))
        } else {
            Err(CatalogError::Invalid(format!(
                "refusing user `{name}`: the catalog holds {USERS_MAX} users, the most it keeps"
            )))
        }
    }

    /// Replaces user `name`'s password hash (`None`: certificate login
    /// only).
    pub async fn set_password(
        &self,
        name: &str,
        password_hash: Option<&str>,
    ) -> Result<(), CatalogError> {
        check_user(name)?;
        check_hash(password_hash)?;
        let changed = with_pool!(self, pool => {
            sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1")
                .bind(name)
                .bind(password_hash)
                .execute(pool)
                .await
                .map_err(db(format!("changing the password of user `{name}`")))?
                .rows_affected()
                == 1
        }, memory => match memory.users.get_mut(name) {
            Some(hash) => {
                *hash = password_hash.map(str::to_string);
                true
            }
            None => false,
        });
        if !changed {
            return Err(unknown_user(name));
        }
        tracing::info!(user = name, "changed a user's password");
        Ok(())
    }

    /// Removes user `name` and its grants, in one transaction that
    /// refuses ([`CatalogError::LockOut`]) to remove the last admin while
    /// auth is on.
    pub async fn remove_user(&self, name: &str) -> Result<(), CatalogError> {
        check_user(name)?;
        self.auth_settings().await?;
        let this = self.clone();
        let owned = name.to_string();
        to_completion(async move { this.remove_user_now(&owned).await }).await
    }

    async fn remove_user_now(&self, name: &str) -> Result<(), CatalogError> {
        let change = Change::RemoveUser(name);
        let removed = with_pool!(self, pool, dialect => {
            let mut tx = pool
                .begin_with(dialect.begin_write)
                .await
                .map_err(db(format!("starting to remove user `{name}`")))?;
            judge_in_tx!(tx, dialect, change);
            sqlx::query("DELETE FROM grants WHERE user_name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db(format!("removing the grants of user `{name}`")))?;
            let removed = sqlx::query("DELETE FROM users WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db(format!("removing user `{name}`")))?
                .rows_affected()
                == 1;
            if removed {
                tx.commit()
                    .await
                    .map_err(db(format!("committing the removal of user `{name}`")))?;
            } else {
                tx.rollback()
                    .await
                    .map_err(db("rolling back the removal of an unknown user"))?;
            }
            removed
        }, memory => {
            judge_in_memory(memory, change)?;
            let removed = memory.users.remove(name).is_some();
            if removed {
                memory.grants.retain(|(user, _, _)| user != name);
            }
            removed
        });
        if !removed {
            return Err(unknown_user(name));
        }
        tracing::info!(user = name, "removed a user from the catalog");
        Ok(())
    }

    /// Grants `grant` to user `name`; granting what it holds changes
    /// nothing. Refuses an unknown user and more than
    /// [`GRANTS_PER_USER_MAX`] grants.
    pub async fn grant(&self, name: &str, grant: &Grant) -> Result<(), CatalogError> {
        check_user(name)?;
        let Some(user) = self.user(name).await? else {
            return Err(unknown_user(name));
        };
        if user.grants.contains(grant) {
            return Ok(());
        }
        let grants_max = to_i64(GRANTS_PER_USER_MAX as u64, "the most grants per user")?;
        let role = grant.role().as_str();
        let prefix = grant.prefix();
        let added = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO grants (user_name, role, prefix) \
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM users WHERE name = $1) \
                 AND (SELECT count(*) FROM grants WHERE user_name = $1) < $4 \
                 ON CONFLICT (user_name, role, prefix) DO NOTHING",
            )
            .bind(name)
            .bind(role)
            .bind(prefix)
            .bind(grants_max)
            .execute(pool)
            .await
            .map_err(db(format!("granting {grant} to user `{name}`")))?
            .rows_affected()
                == 1
        }, memory => {
            let held = memory.grants.iter().filter(|(u, _, _)| u == name).count();
            memory.users.contains_key(name) && held < GRANTS_PER_USER_MAX && {
                memory
                    .grants
                    .insert((name.to_string(), role.to_string(), prefix.to_vec()))
            }
        });
        if added {
            tracing::info!(user = name, %grant, "granted");
            return Ok(());
        }
        match self.user(name).await? {
            None => Err(unknown_user(name)),
            Some(user) if user.grants.contains(grant) => Ok(()),
            Some(_) => Err(CatalogError::Invalid(format!(
                "user `{name}` holds {GRANTS_PER_USER_MAX} grants, the most one user may hold: \
                 revoke one first"
            ))),
        }
    }

    /// Takes `grant` from user `name`, in one transaction that refuses
    /// ([`CatalogError::LockOut`]) to take `admin` from the last admin
    /// while auth is on. Refuses an unknown user and a grant it does not
    /// hold (naming what it holds).
    pub async fn revoke(&self, name: &str, grant: &Grant) -> Result<(), CatalogError> {
        check_user(name)?;
        self.auth_settings().await?;
        let this = self.clone();
        let owned = name.to_string();
        let held = grant.clone();
        let revoked = to_completion(async move { this.revoke_now(&owned, &held).await }).await?;
        if revoked {
            return Ok(());
        }
        match self.user(name).await? {
            None => Err(unknown_user(name)),
            Some(user) => Err(CatalogError::Invalid(format!(
                "user `{name}` does not hold {grant}; it holds: {}",
                if user.grants.is_empty() {
                    "no grant".to_string()
                } else {
                    user.grants
                        .iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))),
        }
    }

    /// Whether the grant was held (and is now gone).
    async fn revoke_now(&self, name: &str, grant: &Grant) -> Result<bool, CatalogError> {
        let change = Change::Revoke(name, grant.role());
        let role = grant.role().as_str();
        let prefix = grant.prefix();
        let revoked = with_pool!(self, pool, dialect => {
            let mut tx = pool
                .begin_with(dialect.begin_write)
                .await
                .map_err(db(format!("starting to revoke {grant} from user `{name}`")))?;
            judge_in_tx!(tx, dialect, change);
            let revoked = sqlx::query(
                "DELETE FROM grants WHERE user_name = $1 AND role = $2 AND prefix = $3",
            )
            .bind(name)
            .bind(role)
            .bind(prefix)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("revoking {grant} from user `{name}`")))?
            .rows_affected()
                == 1;
            tx.commit()
                .await
                .map_err(db(format!("committing the revocation of {grant} from `{name}`")))?;
            revoked
        }, memory => {
            judge_in_memory(memory, change)?;
            memory.grants.remove(&(name.to_string(), role.to_string(), prefix.to_vec()))
        });
        if revoked {
            tracing::info!(user = name, %grant, "revoked");
        }
        Ok(revoked)
    }

    /// Every user with its grants, by name (at most [`USERS_MAX`]).
    pub async fn users(&self) -> Result<Vec<UserRow>, CatalogError> {
        let (users, grants) = with_pool!(self, pool => {
            let users: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT name, password_hash FROM users ORDER BY name")
                    .fetch_all(pool)
                    .await
                    .map_err(db("listing the users"))?;
            let grants: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT user_name, role, prefix FROM grants ORDER BY user_name, role, prefix",
            )
            .fetch_all(pool)
            .await
            .map_err(db("listing the grants"))?;
            (users, grants)
        }, memory => (
            memory.users.iter().map(|(n, h)| (n.clone(), h.clone())).collect(),
            memory.grants.iter().cloned().collect(),
        ));
        join(users, grants)
    }

    /// User `name` with its grants, if it exists.
    pub async fn user(&self, name: &str) -> Result<Option<UserRow>, CatalogError> {
        check_user(name)?;
        let (users, grants) = with_pool!(self, pool => {
            let users: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT name, password_hash FROM users WHERE name = $1")
                    .bind(name)
                    .fetch_all(pool)
                    .await
                    .map_err(db(format!("reading user `{name}`")))?;
            let grants: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT user_name, role, prefix FROM grants WHERE user_name = $1",
            )
            .bind(name)
            .fetch_all(pool)
            .await
            .map_err(db(format!("reading the grants of user `{name}`")))?;
            (users, grants)
        }, memory => (
            memory.users.get(name).map(|h| (name.to_string(), h.clone())).into_iter().collect(),
            memory.grants.iter().filter(|(u, _, _)| u == name).cloned().collect(),
        ));
        Ok(join(users, grants)?.pop())
    }

    /// Whether auth is on, and the token secret. The first call on a
    /// catalog writes the row: off, with a secret of [`SECRET_BYTES`]
    /// random bytes (of two coordinators racing, one row wins and both
    /// read it).
    pub async fn auth_settings(&self) -> Result<AuthSettings, CatalogError> {
        if let Some(settings) = self.read_auth_settings().await? {
            return Ok(settings);
        }
        let mut secret = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO auth_settings (one, enabled, secret) VALUES (1, 0, $1) \
                 ON CONFLICT (one) DO NOTHING",
            )
            .bind(&secret[..])
            .execute(pool)
            .await
            .map_err(db("writing the auth settings"))?;
        }, memory => {
            memory.auth.get_or_insert((0, secret.to_vec()));
        });
        self.read_auth_settings()
            .await?
            .ok_or_else(|| CatalogError::Corrupt("the auth_settings row vanished".to_string()))
    }

    async fn read_auth_settings(&self) -> Result<Option<AuthSettings>, CatalogError> {
        let row: Option<(i64, Vec<u8>)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT enabled, secret FROM auth_settings WHERE one = 1")
                .fetch_optional(pool)
                .await
                .map_err(db("reading the auth settings"))?
        }, memory => memory.auth.clone());
        row.map(|(enabled, secret)| {
            let secret = <[u8; SECRET_BYTES]>::try_from(secret.as_slice()).map_err(|_| {
                CatalogError::Corrupt(format!(
                    "the token secret is {} bytes, not {SECRET_BYTES}",
                    secret.len()
                ))
            })?;
            Ok(AuthSettings {
                enabled: enabled != 0,
                secret,
            })
        })
        .transpose()
    }

    /// Turns auth on or off. Turning it on is one transaction that refuses
    /// ([`CatalogError::LockOut`]) while no user holds admin; whether this
    /// coordinator may turn it on at all (TLS) is the caller's
    /// ([`crate::auth::check_enable_over_tls`]). Turning it off is always
    /// allowed.
    pub async fn set_auth_enabled(&self, enabled: bool) -> Result<(), CatalogError> {
        self.auth_settings().await?;
        let this = self.clone();
        to_completion(async move { this.set_auth_enabled_now(enabled).await }).await?;
        tracing::info!(enabled, "switched auth");
        Ok(())
    }

    async fn set_auth_enabled_now(&self, enabled: bool) -> Result<(), CatalogError> {
        let value = i64::from(enabled);
        with_pool!(self, pool, dialect => {
            let mut tx = pool
                .begin_with(dialect.begin_write)
                .await
                .map_err(db("starting to switch auth"))?;
            if enabled {
                judge_in_tx!(tx, dialect, Change::Enable);
            }
            sqlx::query("UPDATE auth_settings SET enabled = $1 WHERE one = 1")
                .bind(value)
                .execute(&mut *tx)
                .await
                .map_err(db("switching auth"))?;
            tx.commit().await.map_err(db("committing the auth switch"))?;
        }, memory => {
            if enabled {
                judge_in_memory(memory, Change::Enable)?;
            }
            if let Some(row) = memory.auth.as_mut() {
                row.0 = value;
            }
        });
        Ok(())
    }
}
