//! Authorization, pure: whether a user's grants allow one request. The
//! caller authenticates (a node certificate, a client certificate, a
//! token) and hands the user's [`Grants`] and the request's [`Access`] to
//! [`authorize`], once per request — once per transaction for a Commit,
//! never once per key lookup of the user.
//!
//! # Roles
//! A grant is a [`Role`] on a key prefix; the empty prefix is every key.
//! Roles nest: `write` on a prefix also reads it, and `admin` (granted on
//! every key only: see [`Grant::new`]) also reads and writes every key.
//! A key is covered by a grant when the key starts with the grant's
//! prefix (a key equal to the prefix starts with it). A range (a Scan's
//! prefix, a Watch's `[start, end)`) is covered when every key it can hold
//! is — possibly by several grants side by side.
//!
//! This module does no IO, reads no clock, holds no state, and never
//! decides who the caller is.

use std::borrow::Cow;

use trellis_types::limits::KEY_BYTES_MAX;

/// Longest key prefix a grant may carry, in bytes. Tokens carry every
/// grant of their user (see [`crate::token`]) inside an HTTP/2 header,
/// which bounds it well under the key limit.
pub const GRANT_PREFIX_BYTES_MAX: usize = 256;
const _: () = assert!(GRANT_PREFIX_BYTES_MAX <= KEY_BYTES_MAX);
/// Most grants one user may hold.
pub const GRANTS_PER_USER_MAX: usize = 16;

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Get, Scan and Watch keys under the prefix.
    Read,
    /// Read, and write keys under the prefix in a Commit.
    Write,
    /// Everything: every key, the Admin service, users and grants.
    Admin,
}

impl Role {
    /// The role's name on the command line, in the catalog and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// Whether holding `self` allows what `needed` allows.
    pub fn includes(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role `{other}`: use read, write or admin")),
        }
    }
}

/// One role on one key prefix (empty: every key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    role: Role,
    prefix: Vec<u8>,
}

impl Grant {
    /// A grant of `role` on the keys starting with `prefix`. Refuses a
    /// prefix over [`GRANT_PREFIX_BYTES_MAX`] and `admin` on a prefix
    /// (admin is cluster-wide: it manages users, who could grant
    /// themselves any key).
    pub fn new(role: Role, prefix: Vec<u8>) -> Result<Grant, String> {
        if prefix.len() > GRANT_PREFIX_BYTES_MAX {
            return Err(format!(
                "the prefix is {} bytes long: at most {GRANT_PREFIX_BYTES_MAX}",
                prefix.len()
            ));
        }
        if role == Role::Admin && !prefix.is_empty() {
            return Err(format!(
                "admin is granted on every key, not on a prefix (asked for prefix {})",
                show(&prefix)
            ));
        }
        Ok(Grant { role, prefix })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "{} on every key", self.role)
        } else {
            write!(f, "{} on prefix {}", self.role, show(&self.prefix))
        }
    }
}

/// Everything one user may do: at most [`GRANTS_PER_USER_MAX`] grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    user: String,
    grants: Vec<Grant>,
}

impl Grants {
    /// `user`'s grants. Refuses more than [`GRANTS_PER_USER_MAX`].
    pub fn new(user: impl Into<String>, mut grants: Vec<Grant>) -> Result<Grants, String> {
        let user = user.into();
        if grants.len() > GRANTS_PER_USER_MAX {
            return Err(format!(
                "user `{user}` holds {} grants: at most {GRANTS_PER_USER_MAX}",
                grants.len()
            ));
        }
        grants.sort();
        grants.dedup();
        Ok(Grants { user, grants })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Whether the user holds `admin`.
    pub fn is_admin(&self) -> bool {
        self.grants.iter().any(|g| g.role == Role::Admin)
    }
}

/// What one request does, as far as permissions go.
#[derive(Clone, Copy, Debug)]
pub enum Access<'a> {
    /// A Get of these keys.
    Get { keys: &'a [Vec<u8>] },
    /// A Scan of every key starting with `prefix`.
    Scan { prefix: &'a [u8] },
    /// A Watch of `[start, end)` (empty `end`: to the end of the key
    /// space).
    Watch { start: &'a [u8], end: &'a [u8] },
    /// A Commit reading `reads` and writing `writes`.
    Commit {
        reads: &'a [&'a [u8]],
        writes: &'a [&'a [u8]],
    },
    /// An RPC of the Admin service, or of user management.
    Admin,
}

/// Why a request is refused: the user, the missing role, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("user `{user}` lacks `{needed}` {place} (holds: {held})")]
pub struct Denied {
    pub user: String,
    pub needed: Role,
    /// `on key ...`, `on keys from ...` or `on the cluster`.
    pub place: String,
    /// The user's grants, for the message.
    pub held: String,
}

/// Whether `grants` allow `access`: `Ok` or the first thing missing. A
/// Commit is checked whole (every read key for `read`, every written
/// key for `write`) so that a refused one touches nothing.
pub fn authorize(grants: &Grants, access: &Access<'_>) -> Result<(), Denied> {
    let deny = |needed: Role, place: String| Denied {
        user: grants.user.clone(),
        needed,
        place,
        held: held(grants),
    };
    let key = |needed: Role, key: &[u8]| {
        if covers_key(grants, needed, key) {
            Ok(())
        } else {
            Err(deny(needed, format!("on key {}", show(key))))
        }
    };
    match *access {
        Access::Admin => {
            if grants.is_admin() {
                Ok(())
            } else {
                Err(deny(Role::Admin, "on the cluster".to_string()))
            }
        }
        Access::Get { keys } => keys.iter().try_for_each(|k| key(Role::Read, k)),
        Access::Commit { reads, writes } => {
            writes.iter().try_for_each(|k| key(Role::Write, k))?;
            reads.iter().try_for_each(|k| key(Role::Read, k))
        }
        Access::Scan { prefix } => {
            let end = successor(prefix);
            range(grants, Role::Read, prefix, end.as_deref()).map_err(|gap| {
                deny(
                    Role::Read,
                    format!(
                        "on the keys with prefix {} (from {})",
                        show(prefix),
                        show(&gap)
                    ),
                )
            })
        }
        Access::Watch { start, end } => {
            let end = (!end.is_empty()).then_some(end);
            range(grants, Role::Read, start, end).map_err(|gap| {
                deny(
                    Role::Read,
                    format!(
                        "on the keys from {} to {} (from {})",
                        show(start),
                        end.map_or(Cow::Borrowed("the end"), |e| Cow::Owned(show(e))),
                        show(&gap)
                    ),
                )
            })
        }
    }
}

/// Whether some grant of at least `needed` covers `key`.
fn covers_key(grants: &Grants, needed: Role, key: &[u8]) -> bool {
    grants
        .grants
        .iter()
        .any(|g| g.role.includes(needed) && key.starts_with(&g.prefix))
}

/// Whether grants of at least `needed` cover every key in `[start, end)`
/// (`end` `None`: unbounded); the first key not covered otherwise. Walks
/// from `start`: a grant whose prefix the current key starts with covers
/// every key up to the prefix's [`successor`]; jump there and go on.
fn range(grants: &Grants, needed: Role, start: &[u8], end: Option<&[u8]>) -> Result<(), Vec<u8>> {
    let mut at = start.to_vec();
    // Each step moves past a distinct grant's prefix, so the walk is at
    // most one step per grant.
    for _ in 0..=grants.grants.len() {
        if end.is_some_and(|end| at.as_slice() >= end) {
            return Ok(());
        }
        let reach = grants
            .grants
            .iter()
            .filter(|g| g.role.includes(needed) && at.starts_with(&g.prefix))
            .map(|g| successor(&g.prefix))
            // `None` (no successor) reaches the end of the key space.
            .max_by(|a, b| match (a, b) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            });
        match reach {
            None => return Err(at),
            Some(None) => return Ok(()),
            Some(Some(next)) => at = next,
        }
    }
    Err(at)
}

/// The smallest key after every key starting with `prefix`: the prefix
/// with its last byte below 0xff incremented and what follows dropped.
/// `None` when no such key exists (the empty prefix, all 0xff).
pub fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b != 0xff)?;
    let mut next = prefix[..=last].to_vec();
    next[last] += 1;
    Some(next)
}

/// A key or prefix for a message: text when it is printable ASCII, else
/// hex.
pub fn show(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "`` (every key)".to_string()
    } else if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("`{}`", String::from_utf8_lossy(bytes))
    } else {
        format!("0x{}", hex::encode(bytes))
    }
}

fn held(grants: &Grants) -> String {
    if grants.grants.is_empty() {
        return "no grant".to_string();
    }
    grants
        .grants
        .iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(grants: &[(Role, &str)]) -> Grants {
        let grants = grants
            .iter()
            .map(|(r, p)| Grant::new(*r, p.as_bytes().to_vec()).expect("a grant"))
            .collect();
        Grants::new("bob", grants).expect("grants")
    }

    fn keys(ks: &[&str]) -> Vec<Vec<u8>> {
        ks.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    fn commit(grants: &Grants, reads: &[&str], writes: &[&str]) -> Result<(), Denied> {
        let reads: Vec<&[u8]> = reads.iter().map(|k| k.as_bytes()).collect();
        let writes: Vec<&[u8]> = writes.iter().map(|k| k.as_bytes()).collect();
        authorize(
            grants,
            &Access::Commit {
                reads: &reads,
                writes: &writes,
            },
        )
    }

    #[test]
    fn a_reader_reads_but_cannot_write() {
        let bob = user(&[(Role::Read, "")]);
        let ks = keys(&["a", "zz", ""]);
        assert_eq!(authorize(&bob, &Access::Get { keys: &ks }), Ok(()));
        assert_eq!(commit(&bob, &["a"], &[]), Ok(()));
        let denied = commit(&bob, &[], &["a"]).expect_err("a write");
        assert_eq!(denied.needed, Role::Write);
        assert_eq!(
            denied.to_string(),
            "user `bob` lacks `write` on key `a` (holds: read on every key)"
        );
    }

    #[test]
    fn a_writer_of_a_prefix_writes_under_it_only_and_a_commit_is_refused_whole() {
        let bob = user(&[(Role::Write, "a/")]);
        assert_eq!(commit(&bob, &["a/y"], &["a/x"]), Ok(()));
        // The key equal to the prefix starts with it.
        assert_eq!(commit(&bob, &[], &["a/"]), Ok(()));
        let denied = commit(&bob, &[], &["a/x", "b/x", "a/z"]).expect_err("b/x");
        assert_eq!(denied.place, "on key `b/x`");
        assert_eq!(denied.needed, Role::Write);
        // A read outside is refused too, and needs only read.
        let denied = commit(&bob, &["b/y"], &["a/x"]).expect_err("b/y");
        assert_eq!(
            (denied.needed, denied.place.as_str()),
            (Role::Read, "on key `b/y`")
        );
        // A shorter key than the prefix is not under it.
        assert!(commit(&bob, &[], &["a"]).is_err());
    }

    #[test]
    fn admin_is_everything_and_only_admin_is_admin() {
        let root = user(&[(Role::Admin, "")]);
        assert_eq!(authorize(&root, &Access::Admin), Ok(()));
        assert_eq!(commit(&root, &["x"], &["y"]), Ok(()));
        let writer = user(&[(Role::Write, "")]);
        let denied = authorize(&writer, &Access::Admin).expect_err("not admin");
        assert_eq!(denied.needed, Role::Admin);
        assert!(Grant::new(Role::Admin, b"a/".to_vec()).is_err());
    }

    #[test]
    fn no_grant_is_nothing() {
        let nobody = user(&[]);
        let ks = keys(&["a"]);
        let denied = authorize(&nobody, &Access::Get { keys: &ks }).expect_err("no grant");
        assert!(
            denied.to_string().ends_with("(holds: no grant)"),
            "{denied}"
        );
        assert!(authorize(&nobody, &Access::Scan { prefix: b"" }).is_err());
        // Nothing to touch is allowed to anyone.
        assert_eq!(commit(&nobody, &[], &[]), Ok(()));
    }

    #[test]
    fn scans_are_covered_by_their_prefix_or_refused() {
        let bob = user(&[(Role::Read, "a/")]);
        assert_eq!(authorize(&bob, &Access::Scan { prefix: b"a/" }), Ok(()));
        assert_eq!(authorize(&bob, &Access::Scan { prefix: b"a/x" }), Ok(()));
        // `a` holds `a0`, `ab`, ...: not all under `a/`.
        let denied = authorize(&bob, &Access::Scan { prefix: b"a" }).expect_err("wider");
        assert_eq!(denied.place, "on the keys with prefix `a` (from `a`)");
        // The empty prefix is every key.
        assert!(authorize(&bob, &Access::Scan { prefix: b"" }).is_err());
        let all = user(&[(Role::Read, "")]);
        assert_eq!(authorize(&all, &Access::Scan { prefix: b"" }), Ok(()));
    }

    #[test]
    fn a_range_may_be_covered_by_grants_side_by_side_but_not_across_a_gap() {
        // `a` then `b`: together every key from `a` up to `c`.
        let bob = user(&[(Role::Read, "a"), (Role::Write, "b")]);
        let watch = |s: &str, e: &str| {
            authorize(
                &bob,
                &Access::Watch {
                    start: s.as_bytes(),
                    end: e.as_bytes(),
                },
            )
        };
        assert_eq!(watch("a", "c"), Ok(()));
        assert_eq!(watch("a/x", "b/z"), Ok(()));
        // Crossing into `c`: refused, naming the first key not covered.
        let denied = watch("a", "c0").expect_err("crosses into c");
        assert!(denied.place.ends_with("(from `c`)"), "{denied}");
        // To the end of the key space.
        assert!(watch("a", "").is_err());
        // A start outside every grant.
        assert!(watch("0", "a").is_err());
        // An empty range holds no key.
        assert_eq!(watch("x", "x"), Ok(()));
    }

    #[test]
    fn prefixes_of_0xff_reach_the_end_of_the_key_space() {
        assert_eq!(successor(b""), None);
        assert_eq!(successor(&[0xff, 0xff]), None);
        assert_eq!(successor(&[0x01, 0xff]), Some(vec![0x02]));
        assert_eq!(successor(b"a/"), Some(b"a0".to_vec()));
        let top = Grants::new(
            "bob",
            vec![Grant::new(Role::Read, vec![0xff]).expect("grant")],
        )
        .expect("grants");
        let start = [0xff, 0x00];
        assert_eq!(
            authorize(
                &top,
                &Access::Watch {
                    start: &start,
                    end: b""
                }
            ),
            Ok(())
        );
        let denied = authorize(&top, &Access::Scan { prefix: &[0xfe] }).expect_err("0xfe");
        assert_eq!(denied.place, "on the keys with prefix 0xfe (from 0xfe)");
    }

    #[test]
    fn bounds_are_refused_with_a_reason() {
        assert!(Grant::new(Role::Read, vec![b'a'; GRANT_PREFIX_BYTES_MAX]).is_ok());
        let err = Grant::new(Role::Read, vec![b'a'; GRANT_PREFIX_BYTES_MAX + 1]).expect_err("long");
        assert!(err.contains("at most 256"), "{err}");
        let many = (0..=GRANTS_PER_USER_MAX)
            .map(|i| Grant::new(Role::Read, vec![i as u8]).expect("grant"))
            .collect();
        assert!(Grants::new("bob", many).is_err());
        assert_eq!("write".parse::<Role>(), Ok(Role::Write));
        assert!("owner".parse::<Role>().is_err());
    }
}
