//! [`SinkUrl`]: the `--sink` argument of `trellis cdc`, parsed and checked
//! before anything connects. Pure.
//!
//! Accepted forms ([`ACCEPTED_FORMS`]); the port may be left out for the
//! broker's standard one:
//! - `stdout`
//! - `nats://HOST:PORT/SUBJECT`: SUBJECT a NATS subject without wildcards
//!   (`orders`, `trellis.changes`).
//! - `amqp://[USER:PASS@]HOST:PORT/EXCHANGE`: EXCHANGE 1 to 255 of
//!   `[A-Za-z0-9_.:-]`, not starting `amq.` (RabbitMQ keeps those); user
//!   and password `guest` unless given; vhost `/`.
//! - `redis://HOST:PORT[/DB]`: DB a database number, 0 unless given.
//!
//! HOST is a name, an IPv4 address or a bracketed IPv6 address. Nothing is
//! percent-decoded, and a query or fragment is refused.

use crate::SinkError;

/// The forms a sink URL may take, for error messages.
pub const ACCEPTED_FORMS: &str = "stdout, nats://HOST:PORT/SUBJECT, \
     amqp://[USER:PASS@]HOST:PORT/EXCHANGE or redis://HOST:PORT[/DB]";

/// NATS's standard client port.
pub const NATS_PORT_DEFAULT: u16 = 4222;
/// AMQP's standard port.
pub const AMQP_PORT_DEFAULT: u16 = 5672;
/// Redis's standard port.
pub const REDIS_PORT_DEFAULT: u16 = 6379;
/// The AMQP user and password when the URL names none (RabbitMQ's default
/// user, which it lets in from localhost only).
pub const AMQP_USER_DEFAULT: &str = "guest";
/// Longest AMQP exchange name, in bytes (an AMQP short string).
pub const EXCHANGE_BYTES_MAX: usize = 255;
/// Longest NATS subject we accept, in bytes (a stream named after it must
/// stay within NATS's limits on names).
pub const SUBJECT_BYTES_MAX: usize = 200;

/// A checked sink URL. `Display` writes it back without the password.
#[derive(Clone, PartialEq, Eq)]
pub enum SinkUrl {
    Stdout,
    Nats {
        host: String,
        port: u16,
        subject: String,
    },
    Amqp {
        user: String,
        password: String,
        host: String,
        port: u16,
        exchange: String,
    },
    Redis {
        host: String,
        port: u16,
        db: u32,
    },
}

impl std::fmt::Debug for SinkUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SinkUrl({self})")
    }
}

impl std::fmt::Display for SinkUrl {
    /// The sink's kind and URL, never the password: `NATS JetStream
    /// nats://127.0.0.1:4222/orders`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkUrl::Stdout => write!(f, "stdout"),
            SinkUrl::Nats {
                host,
                port,
                subject,
            } => write!(f, "NATS JetStream nats://{host}:{port}/{subject}"),
            SinkUrl::Amqp {
                user,
                host,
                port,
                exchange,
                ..
            } => write!(f, "RabbitMQ amqp://{user}@{host}:{port}/{exchange}"),
            SinkUrl::Redis { host, port, db } => write!(f, "Redis redis://{host}:{port}/{db}"),
        }
    }
}

impl SinkUrl {
    /// Parses and checks a sink URL; the error names what is wrong and the
    /// accepted forms.
    pub fn parse(url: &str) -> Result<SinkUrl, SinkError> {
        let bad = |reason: &str| SinkError::BadUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        if url == "stdout" {
            return Ok(SinkUrl::Stdout);
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("it has no scheme"));
        };
        if rest.contains(['?', '#']) {
            return Err(bad("a query or fragment is not accepted"));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        match scheme {
            "nats" => {
                let (host, port) = host_port(authority, NATS_PORT_DEFAULT).map_err(|r| bad(&r))?;
                check_subject(path).map_err(|r| bad(&r))?;
                Ok(SinkUrl::Nats {
                    host,
                    port,
                    subject: path.to_string(),
                })
            }
            "amqp" => {
                let (userinfo, hostport) = match authority.rsplit_once('@') {
                    Some((userinfo, hostport)) => (Some(userinfo), hostport),
                    None => (None, authority),
                };
                let (user, password) = match userinfo {
                    None => (AMQP_USER_DEFAULT.to_string(), AMQP_USER_DEFAULT.to_string()),
                    Some(userinfo) => match userinfo.split_once(':') {
                        Some((user, password)) if !user.is_empty() => {
                            (user.to_string(), password.to_string())
                        }
                        _ => return Err(bad("the user must be given as USER:PASS@")),
                    },
                };
                let (host, port) = host_port(hostport, AMQP_PORT_DEFAULT).map_err(|r| bad(&r))?;
                check_exchange(path).map_err(|r| bad(&r))?;
                Ok(SinkUrl::Amqp {
                    user,
                    password,
                    host,
                    port,
                    exchange: path.to_string(),
                })
            }
            "redis" => {
                if authority.contains('@') {
                    return Err(bad("a Redis user or password is not accepted"));
                }
                let (host, port) = host_port(authority, REDIS_PORT_DEFAULT).map_err(|r| bad(&r))?;
                let db = if path.is_empty() {
                    0
                } else {
                    path.parse::<u32>().map_err(|_| {
                        bad(&format!(
                            "the Redis database must be a number, not `{path}`"
                        ))
                    })?
                };
                Ok(SinkUrl::Redis { host, port, db })
            }
            other => Err(bad(&format!("unknown scheme `{other}`"))),
        }
    }
}

/// The URL with any `USER:PASS@` password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{hostport}{path}")
        }
        None => url.to_string(),
    }
}

/// Splits `HOST[:PORT]` (HOST may be `[IPv6]`), with `default` for a
/// missing port.
fn host_port(authority: &str, default: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!(
                "`{authority}` opens an IPv6 address with [ but does not close it"
            ));
        };
        match after {
            "" => (format!("[{host}]"), None),
            _ => match after.strip_prefix(':') {
                Some(port) => (format!("[{host}]"), Some(port)),
                None => {
                    return Err(format!(
                        "`{authority}` has `{after}` after the IPv6 address"
                    ));
                }
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("the host is missing".to_string());
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')))
    {
        return Err(format!("the host `{host}` has the character {bad:?}"));
    }
    let port = match port {
        None => default,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("the port must be 1 to 65535, not `{port}`")),
        },
    };
    Ok((host, port))
}

/// A NATS subject to publish to: dot-separated tokens, none empty, no
/// whitespace, no wildcard.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the NATS subject is missing: nats://HOST:PORT/SUBJECT".to_string());
    }
    if subject.len() > SUBJECT_BYTES_MAX {
        return Err(format!(
            "the NATS subject is {} bytes; at most {SUBJECT_BYTES_MAX}",
            subject.len()
        ));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(format!("the NATS subject `{subject}` has an empty token"));
    }
    if let Some(bad) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
    {
        return Err(format!(
            "the NATS subject `{subject}` has the character {bad:?} (no whitespace or wildcards)"
        ));
    }
    Ok(())
}

/// An AMQP exchange name we may declare.
fn check_exchange(exchange: &str) -> Result<(), String> {
    if exchange.is_empty() {
        return Err(
            "the RabbitMQ exchange is missing: amqp://[USER:PASS@]HOST:PORT/EXCHANGE".to_string(),
        );
    }
    if exchange.len() > EXCHANGE_BYTES_MAX {
        return Err(format!(
            "the exchange name is {} bytes; at most {EXCHANGE_BYTES_MAX}",
            exchange.len()
        ));
    }
    if let Some(bad) = exchange
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "the exchange `{exchange}` has the character {bad:?}: use A-Z, a-z, 0-9, '-', '_', '.', ':'"
        ));
    }
    if exchange.starts_with("amq.") {
        return Err(format!(
            "the exchange `{exchange}` starts with `amq.`, which RabbitMQ reserves"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepted_forms_parse() {
        let cases = [
            ("stdout", SinkUrl::Stdout),
            (
                "nats://127.0.0.1:4222/orders.created",
                SinkUrl::Nats {
                    host: "127.0.0.1".into(),
                    port: 4222,
                    subject: "orders.created".into(),
                },
            ),
            (
                "nats://broker/orders",
                SinkUrl::Nats {
                    host: "broker".into(),
                    port: NATS_PORT_DEFAULT,
                    subject: "orders".into(),
                },
            ),
            (
                "amqp://127.0.0.1:5672/trellis",
                SinkUrl::Amqp {
                    user: "guest".into(),
                    password: "guest".into(),
                    host: "127.0.0.1".into(),
                    port: 5672,
                    exchange: "trellis".into(),
                },
            ),
            (
                "amqp://app:s3:cr@t@[::1]:5673/ex.1",
                SinkUrl::Amqp {
                    user: "app".into(),
                    password: "s3:cr@t".into(),
                    host: "[::1]".into(),
                    port: 5673,
                    exchange: "ex.1".into(),
                },
            ),
            (
                "redis://127.0.0.1:6379",
                SinkUrl::Redis {
                    host: "127.0.0.1".into(),
                    port: 6379,
                    db: 0,
                },
            ),
            (
                "redis://cache:7000/3",
                SinkUrl::Redis {
                    host: "cache".into(),
                    port: 7000,
                    db: 3,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(SinkUrl::parse(text).expect(text), want, "{text}");
        }
    }

    #[test]
    fn display_names_the_kind_and_hides_the_password() {
        let url = SinkUrl::parse("amqp://app:hunter2@127.0.0.1:5672/ex").expect("parse");
        assert_eq!(url.to_string(), "RabbitMQ amqp://app@127.0.0.1:5672/ex");
        assert!(!format!("{url:?}").contains("hunter2"));
        let url = SinkUrl::parse("nats://127.0.0.1:4222/s").expect("parse");
        assert_eq!(url.to_string(), "NATS JetStream nats://127.0.0.1:4222/s");
    }

    #[test]
    fn bad_urls_say_why_and_name_the_accepted_forms() {
        let cases = [
            ("", "no scheme"),
            ("kafka://127.0.0.1:9092/t", "unknown scheme `kafka`"),
            ("http://x/y", "unknown scheme `http`"),
            ("nats://127.0.0.1:4222", "subject is missing"),
            ("nats://127.0.0.1:4222/", "subject is missing"),
            ("nats://127.0.0.1:4222/a..b", "empty token"),
            ("nats://127.0.0.1:4222/a.*", "wildcards"),
            ("nats://127.0.0.1:4222/a.>", "wildcards"),
            ("nats://127.0.0.1:4222/a b", "wildcards"),
            ("nats://:4222/a", "host is missing"),
            ("nats://h:0/a", "port must be 1 to 65535"),
            ("nats://h:99999/a", "port must be 1 to 65535"),
            ("nats://h:x/a", "port must be 1 to 65535"),
            ("nats://[::1/a", "does not close"),
            ("amqp://127.0.0.1:5672", "exchange is missing"),
            ("amqp://127.0.0.1:5672/amq.topic", "reserves"),
            ("amqp://127.0.0.1:5672/a/b", "character '/'"),
            ("amqp://user@127.0.0.1:5672/x", "USER:PASS@"),
            ("redis://127.0.0.1:6379/zero", "must be a number"),
            ("redis://u:p@127.0.0.1:6379", "user or password"),
            ("redis://127.0.0.1:6379/0?x=1", "query or fragment"),
        ];
        for (text, says) in cases {
            let err = SinkUrl::parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.contains(ACCEPTED_FORMS), "{text}: {err}");
        }
        let long = format!("nats://h/{}", "s".repeat(SUBJECT_BYTES_MAX + 1));
        assert!(SinkUrl::parse(&long).is_err());
        let long = format!("amqp://h/{}", "e".repeat(EXCHANGE_BYTES_MAX + 1));
        assert!(SinkUrl::parse(&long).is_err());
    }

    #[test]
    fn a_refused_url_never_shows_its_password() {
        let err = SinkUrl::parse("amqp://app:hunter2@127.0.0.1:5672/amq.x")
            .expect_err("reserved")
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("amqp://app:***@127.0.0.1:5672/amq.x"), "{err}");
    }
}
