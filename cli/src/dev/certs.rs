//! `trellis dev`'s own TLS files, and how the tools find them.
//!
//! - **Made once, then kept.** On a data directory without them, dev makes
//!   `<data-dir>/tls/`: a CA, one node certificate for every process it
//!   runs (named for the hosts its children are dialled at) and one client
//!   certificate, [`CLIENT_NAME`], for the tools. The certificates come from
//!   `trellis_net::tls::issue` and are written by `crate::cert::write_pair`,
//!   as `trellis cert` makes and writes them. Later starts reuse the files;
//!   [`plan`] decides, and refuses a set with some files missing rather
//!   than making a new CA over the others.
//! - **Found by the tools.** A tool given no `--tls-*` flag looks at the
//!   dev data directory ([`DATA_DIR_ENV`], else [`DATA_DIR_DEFAULT`]): if a
//!   dev runs there (`dev.lock` held), is up (`dev.ready`), runs TLS with
//!   these files (`tls=dev` in `dev.ready`) and serves the very address
//!   the tool dials, the tool uses the dev's CA and client certificate.
//!   [`decide`] is that rule, pure; [`look`] and [`for_tool`] do the IO.
//!
//! It never regenerates a file that exists, and never gives dev's files to
//! a tool dialling any address but the dev's own.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use trellis_net::tls::TlsFiles;
use trellis_net::tls::issue;

use super::{READY_FILE, parse_ready, running_dev};

/// The environment variable naming the dev data directory, for `trellis
/// dev` (its `--data-dir`), `trellis dev add-group` and every tool that
/// looks for a dev's certificates.
pub(crate) const DATA_DIR_ENV: &str = "TRELLIS_DEV_DATA_DIR";
/// The dev data directory when neither `--data-dir` nor [`DATA_DIR_ENV`]
/// names one (relative to where the command runs).
pub(crate) const DATA_DIR_DEFAULT: &str = "./trellis-dev-data";
/// The subdirectory of the data directory with dev's TLS files.
pub(crate) const TLS_DIR: &str = "tls";
/// The name of dev's client certificate (`trellis://client/dev`): who the
/// tools are, to the cluster.
pub(crate) const CLIENT_NAME: &str = "dev";
/// The name of the node certificate every process of dev holds.
const NODE_NAME: &str = "node";
/// The cluster name written in dev's CA.
const CLUSTER_NAME: &str = "trellis-dev";
/// The hosts dev's children are always dialled at: the shards listen on
/// 127.0.0.1, and a person may type either.
const HOSTS_ALWAYS: [&str; 2] = ["127.0.0.1", "localhost"];
/// Mode of the `tls` directory: its owner only (it holds the CA key).
const TLS_DIR_MODE: u32 = 0o700;
/// The field of `dev.ready` that says how dev runs TLS ([`DevTls`]).
pub(crate) const READY_TLS_FIELD: &str = "tls";

/// How a running dev speaks to its members and clients, as written in
/// `dev.ready` (`tls=dev|flags|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DevTls {
    /// Mutual TLS with dev's own files in `<data-dir>/tls`.
    Own,
    /// Mutual TLS with the files given by `--tls-*` (or `TRELLIS_TLS_*`).
    Given,
    /// Plaintext: `--insecure`.
    Off,
}

impl DevTls {
    /// Its value in `dev.ready`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DevTls::Own => "dev",
            DevTls::Given => "flags",
            DevTls::Off => "off",
        }
    }

    fn parse(text: &str) -> Option<DevTls> {
        [DevTls::Own, DevTls::Given, DevTls::Off]
            .into_iter()
            .find(|t| t.name() == text)
    }
}

/// Where dev's files are in `data_dir`.
pub(crate) struct Layout {
    pub(crate) dir: PathBuf,
}

impl Layout {
    pub(crate) fn new(data_dir: &Path) -> Layout {
        Layout {
            dir: data_dir.join(TLS_DIR),
        }
    }

    fn pem(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.pem"))
    }

    fn key(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}-key.pem"))
    }

    fn ca_key(&self) -> PathBuf {
        self.key("ca")
    }

    /// The files every process of dev runs with.
    pub(crate) fn node(&self) -> TlsFiles {
        TlsFiles {
            ca: self.pem("ca"),
            cert: self.pem(NODE_NAME),
            key: self.key(NODE_NAME),
        }
    }

    /// The files a tool runs with.
    pub(crate) fn client(&self) -> TlsFiles {
        TlsFiles {
            ca: self.pem("ca"),
            cert: self.pem(CLIENT_NAME),
            key: self.key(CLIENT_NAME),
        }
    }

    /// The files a running dev needs, each once (the CA key is not one:
    /// only making certificates needs it).
    fn needed(&self) -> Vec<PathBuf> {
        let (node, client) = (self.node(), self.client());
        vec![node.ca, node.cert, node.key, client.cert, client.key]
    }
}

/// What to do with the `tls` directory, from which of its files exist.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// None of them: make a CA and the certificates.
    Make,
    /// Every file a running dev needs: use them.
    Reuse,
    /// Some: refuse, naming those missing (a new CA would not match the
    /// certificates that are there, nor the CA the tools hold).
    Incomplete { missing: Vec<PathBuf> },
}

/// Decides from `needed` (each of [`Layout::needed`] with whether it
/// exists) and `ca_key` (the CA's key, and whether it exists): reuse when
/// every needed file is there (the CA key may be kept elsewhere), make
/// when none is and no CA key either, else refuse.
pub(crate) fn plan(needed: &[(PathBuf, bool)], ca_key: &(PathBuf, bool)) -> Plan {
    if needed.iter().all(|(_, e)| *e) {
        return Plan::Reuse;
    }
    if needed.iter().all(|(_, e)| !e) && !ca_key.1 {
        return Plan::Make;
    }
    Plan::Incomplete {
        missing: needed
            .iter()
            .chain(std::iter::once(ca_key))
            .filter(|(_, e)| !e)
            .map(|(p, _)| p.clone())
            .collect(),
    }
}

/// The hosts the node certificate names: 127.0.0.1, localhost, and the
/// host of `--listen` (the shards dial the coordinator at the address it
/// bound, 0.0.0.0 included).
pub(crate) fn node_hosts(listen: IpAddr) -> Vec<String> {
    let mut hosts: Vec<String> = HOSTS_ALWAYS.iter().map(|h| h.to_string()).collect();
    let listen = listen.to_string();
    if !hosts.contains(&listen) {
        hosts.push(listen);
    }
    hosts
}

/// The hosts of `wanted` that a certificate naming `named` lacks.
pub(crate) fn missing_hosts(named: &[String], wanted: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| !named.contains(w))
        .cloned()
        .collect()
}

/// Makes dev's files in `data_dir` on a first start, or checks those of an
/// earlier one; says which in one line. A node certificate that does not
/// name this start's `--listen` host (an earlier start listened
/// elsewhere) is made again from the kept CA, or refused naming the host
/// when the CA's key is gone. Returns the node files.
pub(crate) fn prepare(data_dir: &Path, listen: IpAddr) -> anyhow::Result<TlsFiles> {
    let layout = Layout::new(data_dir);
    let exists = |path: PathBuf| {
        let e = path.exists();
        (path, e)
    };
    let needed: Vec<(PathBuf, bool)> = layout.needed().into_iter().map(exists).collect();
    match plan(&needed, &exists(layout.ca_key())) {
        Plan::Reuse => {
            // Read now, so that an unreadable file is named before any
            // process starts.
            for files in [layout.node(), layout.client()] {
                trellis_net::tls::Identity::load(&files).with_context(|| {
                    format!(
                        "loading dev's TLS files in {} (remove that directory to make new ones; \
                         tools holding the old CA must then be given the new one)",
                        layout.dir.display()
                    )
                })?;
            }
            let node = layout.node();
            let named = std::fs::read(&node.cert)
                .map_err(|e| e.to_string())
                .and_then(|pem| trellis_net::tls::hosts_of_pem(&pem))
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", node.cert.display()))?;
            let missing = missing_hosts(&named, &node_hosts(listen));
            if missing.is_empty() {
                eprintln!(
                    "TLS: reusing the CA and certificates in {}",
                    layout.dir.display()
                );
            } else {
                remake_node(&layout, listen, &missing)?;
            }
        }
        Plan::Make => {
            make(&layout, listen)?;
            eprintln!(
                "TLS: made a CA, a node certificate and the client certificate `{CLIENT_NAME}` \
                 in {}",
                layout.dir.display()
            );
        }
        Plan::Incomplete { missing } => {
            let missing: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            anyhow::bail!(
                "dev's TLS files are incomplete: {} missing; dev will not make a new CA over the \
                 files that are there. Put the file back, or remove {} to start over with a new \
                 CA (tools holding the old CA must then be given the new one), or run \
                 `trellis dev --insecure` (plaintext)",
                missing.join(", "),
                layout.dir.display()
            );
        }
    }
    Ok(layout.node())
}

/// Makes the node certificate again, for `listen`, from the CA kept in the
/// directory; `missing` are the hosts the old one lacked.
fn remake_node(layout: &Layout, listen: IpAddr, missing: &[String]) -> anyhow::Result<()> {
    let node = layout.node();
    if !layout.ca_key().exists() {
        anyhow::bail!(
            "dev's node certificate {} does not name {} (an earlier start listened elsewhere) \
             and the CA's key {} is not there to make a new one: put it back, or remove {} to \
             start over with a new CA (tools holding the old CA must then be given the new one)",
            node.cert.display(),
            missing.join(", "),
            layout.ca_key().display(),
            layout.dir.display()
        );
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let ca = issue::Pem {
        cert: read(&node.ca)?,
        key: read(&layout.ca_key())?,
    };
    let now = time::OffsetDateTime::now_utc();
    let made = issue::create_node(
        &ca,
        NODE_NAME,
        &node_hosts(listen),
        now,
        issue::LEAF_VALIDITY_DAYS,
    )?;
    crate::cert::write_pair(&node.cert, &node.key, &made, true)?;
    eprintln!(
        "TLS: the node certificate in {} did not name {}; made a new one from the dev's CA",
        layout.dir.display(),
        missing.join(", ")
    );
    Ok(())
}

/// Makes the CA and the two certificates and writes them, keys 0600, in a
/// directory only its owner can enter.
fn make(layout: &Layout, listen: IpAddr) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(TLS_DIR_MODE)
        .create(&layout.dir)
        .with_context(|| format!("making {}", layout.dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let ca = issue::create_ca(CLUSTER_NAME, now, issue::CA_VALIDITY_DAYS)?;
    let node = issue::create_node(
        &ca,
        NODE_NAME,
        &node_hosts(listen),
        now,
        issue::LEAF_VALIDITY_DAYS,
    )?;
    let client = issue::create_client(&ca, CLIENT_NAME, now, issue::LEAF_VALIDITY_DAYS)?;
    // The leaves first and the CA last: a start interrupted halfway
    // leaves an incomplete set, which the next start names.
    let (node_files, client_files) = (layout.node(), layout.client());
    crate::cert::write_pair(&node_files.cert, &node_files.key, &node, false)?;
    crate::cert::write_pair(&client_files.cert, &client_files.key, &client, false)?;
    crate::cert::write_pair(&node_files.ca, &layout.ca_key(), &ca, false)
}

/// What a tool saw of the dev data directory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seen {
    /// The directory looked at.
    pub(crate) dir: PathBuf,
    /// Does a dev run there (hold `dev.lock`)?
    pub(crate) running: bool,
    /// The fields of `dev.ready`, if it could be read.
    pub(crate) ready: Option<Vec<(String, String)>>,
}

/// Which TLS files a tool uses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The `--tls-*` flags (or `TRELLIS_TLS_*`) it was given.
    Flags,
    /// The running dev's CA and client certificate.
    Dev(TlsFiles),
    /// None: plaintext, for this reason.
    Plaintext(Why),
}

/// Why a tool given no `--tls-*` flag speaks plaintext.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// The command dials no coordinator.
    DialsNothing,
    /// No dev runs on the directory.
    NoDev { dir: PathBuf },
    /// A dev runs there but is not up yet (no `dev.ready`).
    NotUp { dir: PathBuf },
    /// The dev serves another address than the one dialled.
    OtherAddress {
        dir: PathBuf,
        dialled: String,
        dev: String,
    },
    /// The dev runs plaintext (`--insecure`).
    DevInsecure { dir: PathBuf },
    /// The dev runs with `--tls-*` files of its own choosing: the tool
    /// needs a client certificate of that CA.
    DevGivenFiles { dir: PathBuf, dev: String },
}

impl Choice {
    /// Is it about a dev serving the address dialled (its files used, or
    /// plaintext because of how it runs)? Worth a line in every run's log
    /// (info); the rest (no dev, another address) only at debug, since
    /// most runs against other clusters are that.
    pub(crate) fn about_the_dev(&self) -> bool {
        match self {
            Choice::Dev(_)
            | Choice::Plaintext(Why::DevInsecure { .. } | Why::DevGivenFiles { .. }) => true,
            Choice::Flags
            | Choice::Plaintext(
                Why::DialsNothing
                | Why::NoDev { .. }
                | Why::NotUp { .. }
                | Why::OtherAddress { .. },
            ) => false,
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Flags => write!(f, "TLS with the --tls-* files given"),
            Choice::Dev(files) => write!(
                f,
                "TLS with the running trellis dev's CA {} and client certificate {}",
                files.ca.display(),
                files.cert.display()
            ),
            Choice::Plaintext(why) => write!(f, "plaintext: {why}"),
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::DialsNothing => write!(f, "this command dials no coordinator"),
            Why::NoDev { dir } => write!(
                f,
                "no --tls-* flag, and no trellis dev runs on {} ({DATA_DIR_ENV} names another)",
                dir.display()
            ),
            Why::NotUp { dir } => write!(
                f,
                "the trellis dev on {} is not up yet (no {READY_FILE})",
                dir.display()
            ),
            Why::OtherAddress { dir, dialled, dev } => write!(
                f,
                "the trellis dev on {} serves {dev}, and {dialled} is another address: its \
                 certificates are for its own cluster only",
                dir.display()
            ),
            Why::DevInsecure { dir } => write!(
                f,
                "the trellis dev on {} runs plaintext (--insecure)",
                dir.display()
            ),
            Why::DevGivenFiles { dir, dev } => write!(
                f,
                "the trellis dev on {} serves {dev} with --tls-* files of its own: give this \
                 command --tls-ca, --tls-cert and --tls-key of a client certificate of that CA",
                dir.display()
            ),
        }
    }
}

/// The rule. `flags`: the tool was given `--tls-*` (they win);
/// `dialled`: the coordinator address it dials (`None`: it dials none);
/// `seen`: what was read of the dev data directory. Dev's files only for
/// a dev that runs, is up, runs TLS with its own files, and serves the
/// address dialled.
pub(crate) fn decide(flags: bool, dialled: Option<&str>, seen: &Seen) -> Choice {
    if flags {
        return Choice::Flags;
    }
    let Some(dialled) = dialled else {
        return Choice::Plaintext(Why::DialsNothing);
    };
    let dir = seen.dir.clone();
    if !seen.running {
        return Choice::Plaintext(Why::NoDev { dir });
    }
    let Some(ready) = &seen.ready else {
        return Choice::Plaintext(Why::NotUp { dir });
    };
    let field = |key: &str| {
        ready
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let Some(dev) = field("grpc") else {
        return Choice::Plaintext(Why::NotUp { dir });
    };
    if !same_address(dialled, dev) {
        return Choice::Plaintext(Why::OtherAddress {
            dir,
            dialled: dialled.to_string(),
            dev: dev.to_string(),
        });
    }
    // A dev.ready without the field: written by a dev from before TLS
    // by default, which ran plaintext.
    match field(READY_TLS_FIELD).and_then(DevTls::parse) {
        Some(DevTls::Own) => Choice::Dev(Layout::new(&dir).client()),
        Some(DevTls::Given) => Choice::Plaintext(Why::DevGivenFiles {
            dir,
            dev: dev.to_string(),
        }),
        Some(DevTls::Off) | None => Choice::Plaintext(Why::DevInsecure { dir }),
    }
}

/// Is `dialled` the address `dev` (a coordinator's bound address) serves?
/// The same port, and the same host, or a loopback name for a loopback or
/// wildcard (0.0.0.0, ::) bound address.
pub(crate) fn same_address(dialled: &str, dev: &str) -> bool {
    let (Some((dialled_host, dialled_port)), Some((dev_host, dev_port))) =
        (host_port(dialled), host_port(dev))
    else {
        return false;
    };
    if dialled_port != dev_port {
        return false;
    }
    if dialled_host == dev_host {
        return true;
    }
    let loopback = |host: &str| {
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    let wildcard = |host: &str| host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    loopback(dialled_host) && (loopback(dev_host) || wildcard(dev_host))
}

/// `HOST:PORT` (`[V6]:PORT` too) as host and port.
fn host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

/// The dev data directory a tool looks at: `env` (the value of
/// [`DATA_DIR_ENV`]) if set and not empty, else [`DATA_DIR_DEFAULT`].
pub(crate) fn data_dir(env: Option<std::ffi::OsString>) -> PathBuf {
    env.filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT))
}

/// Reads what [`decide`] needs of `dir`: whether a dev holds its lock, and
/// its ready file. Never takes the lock for longer than a look.
pub(crate) fn look(dir: &Path) -> Seen {
    let running = running_dev(dir).is_ok();
    let ready = running
        .then(|| std::fs::read_to_string(dir.join(READY_FILE)).ok())
        .flatten()
        .map(|text| parse_ready(&text));
    Seen {
        dir: dir.to_path_buf(),
        running,
        ready,
    }
}

/// The choice for a command run with or without `--tls-*` flags that
/// dials `dialled`: looks at the dev data directory only when it matters.
pub(crate) fn for_tool(flags: bool, dialled: Option<&str>) -> Choice {
    let seen = if flags || dialled.is_none() {
        Seen::default()
    } else {
        look(&data_dir(std::env::var_os(DATA_DIR_ENV)))
    };
    decide(flags, dialled, &seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(running: bool, ready: Option<&str>) -> Seen {
        Seen {
            dir: PathBuf::from("/d"),
            running,
            ready: ready.map(parse_ready),
        }
    }

    const UP: &str = "grpc=127.0.0.1:50051 metrics=127.0.0.1:9100 replicas=3 tls=dev";

    #[test]
    fn a_tool_uses_the_dev_files_only_for_the_running_devs_own_address() {
        let up = seen(true, Some(UP));
        let dev = Choice::Dev(TlsFiles {
            ca: PathBuf::from("/d/tls/ca.pem"),
            cert: PathBuf::from("/d/tls/dev.pem"),
            key: PathBuf::from("/d/tls/dev-key.pem"),
        });
        assert_eq!(decide(false, Some("127.0.0.1:50051"), &up), dev);
        assert_eq!(decide(false, Some("localhost:50051"), &up), dev);
        // Flags win, whatever the directory says.
        assert_eq!(decide(true, Some("127.0.0.1:50051"), &up), Choice::Flags);
        // Another address: never the dev's files.
        for other in ["127.0.0.1:50052", "10.0.0.5:50051", "db1:50051"] {
            let choice = decide(false, Some(other), &up);
            assert!(
                matches!(&choice, Choice::Plaintext(Why::OtherAddress { dialled, .. }) if dialled == other),
                "{other}: {choice:?}"
            );
            assert!(choice.to_string().contains("another address"), "{choice}");
        }
        assert_eq!(
            decide(false, None, &up),
            Choice::Plaintext(Why::DialsNothing)
        );
    }

    #[test]
    fn a_dev_that_is_not_running_not_up_or_not_on_its_own_files_gives_none() {
        let dir = PathBuf::from("/d");
        let at = Some("127.0.0.1:50051");
        // A ready file left behind by a killed dev: the lock says no dev.
        assert_eq!(
            decide(false, at, &seen(false, Some(UP))),
            Choice::Plaintext(Why::NoDev { dir: dir.clone() })
        );
        assert_eq!(
            decide(false, at, &seen(true, None)),
            Choice::Plaintext(Why::NotUp { dir: dir.clone() })
        );
        let insecure = UP.replace("tls=dev", "tls=off");
        assert_eq!(
            decide(false, at, &seen(true, Some(&insecure))),
            Choice::Plaintext(Why::DevInsecure { dir: dir.clone() })
        );
        // Written before dev ran TLS by default: it ran plaintext.
        let old = UP.replace(" tls=dev", "");
        assert_eq!(
            decide(false, at, &seen(true, Some(&old))),
            Choice::Plaintext(Why::DevInsecure { dir: dir.clone() })
        );
        let given = UP.replace("tls=dev", "tls=flags");
        let choice = decide(false, at, &seen(true, Some(&given)));
        assert!(
            matches!(choice, Choice::Plaintext(Why::DevGivenFiles { .. })),
            "{choice:?}"
        );
        assert!(choice.to_string().contains("--tls-cert"), "{choice}");
    }

    #[test]
    fn addresses_match_by_port_and_host_with_loopback_names_alike() {
        assert!(same_address("127.0.0.1:50051", "127.0.0.1:50051"));
        assert!(same_address("localhost:50051", "127.0.0.1:50051"));
        assert!(same_address("127.0.0.1:50051", "0.0.0.0:50051"));
        assert!(same_address("[::1]:50051", "[::]:50051"));
        assert!(same_address("10.0.0.5:50051", "10.0.0.5:50051"));
        assert!(!same_address("127.0.0.1:50052", "127.0.0.1:50051"));
        assert!(!same_address("10.0.0.5:50051", "0.0.0.0:50051"));
        assert!(!same_address("10.0.0.5:50051", "127.0.0.1:50051"));
        assert!(!same_address("127.0.0.1", "127.0.0.1:50051"));
    }

    #[test]
    fn the_data_dir_is_the_env_value_or_the_default() {
        assert_eq!(data_dir(None), PathBuf::from(DATA_DIR_DEFAULT));
        assert_eq!(data_dir(Some("".into())), PathBuf::from(DATA_DIR_DEFAULT));
        assert_eq!(data_dir(Some("/x".into())), PathBuf::from("/x"));
    }

    #[test]
    fn files_are_made_when_none_exist_and_never_over_some() {
        let file = |name: &str, e: bool| (PathBuf::from(name), e);
        let no_key = file("k", false);
        assert_eq!(
            plan(&[file("a", false), file("b", false)], &no_key),
            Plan::Make
        );
        assert_eq!(
            plan(&[file("a", true), file("b", true)], &no_key),
            Plan::Reuse,
            "the CA key is not needed to run"
        );
        assert_eq!(
            plan(&[file("a", true), file("b", false)], &file("k", true)),
            Plan::Incomplete {
                missing: vec![PathBuf::from("b")]
            }
        );
        // Only the CA key left: not made over.
        assert_eq!(
            plan(&[file("a", false)], &file("k", true)),
            Plan::Incomplete {
                missing: vec![PathBuf::from("a")]
            }
        );
        assert_eq!(
            node_hosts("127.0.0.1".parse().expect("ip")),
            ["127.0.0.1", "localhost"]
        );
        assert_eq!(
            node_hosts("0.0.0.0".parse().expect("ip")),
            ["127.0.0.1", "localhost", "0.0.0.0"]
        );
    }

    #[test]
    fn a_first_start_makes_the_files_and_a_later_one_reuses_them() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let node = prepare(dir.path(), "127.0.0.1".parse().expect("ip")).expect("made");
        let layout = Layout::new(dir.path());
        for key in [&node.key, &layout.client().key, &layout.ca_key()] {
            let mode = std::fs::metadata(key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let client = trellis_net::tls::Identity::load(&layout.client()).expect("client loads");
        assert_eq!(
            client.role(),
            &trellis_net::tls::PeerRole::Client(CLIENT_NAME.into())
        );
        let ca = std::fs::read(&node.ca).expect("ca");
        assert_eq!(
            prepare(dir.path(), "127.0.0.1".parse().expect("ip")).expect("reused"),
            node
        );
        assert_eq!(std::fs::read(&node.ca).expect("ca"), ca, "the same CA");

        // Another --listen host: a new node certificate from the same CA;
        // without the CA's key, refused naming the host.
        let hosts = |path: &Path| {
            trellis_net::tls::hosts_of_pem(&std::fs::read(path).expect("node cert")).expect("hosts")
        };
        assert_eq!(hosts(&node.cert), ["127.0.0.1", "localhost"]);
        prepare(dir.path(), "10.1.2.3".parse().expect("ip")).expect("remade");
        assert_eq!(hosts(&node.cert), ["127.0.0.1", "localhost", "10.1.2.3"]);
        assert_eq!(std::fs::read(&node.ca).expect("ca"), ca, "the same CA");
        trellis_net::tls::Identity::load(&node).expect("the new node certificate loads");
        let ca_key = std::fs::read(layout.ca_key()).expect("ca key");
        std::fs::remove_file(layout.ca_key()).expect("remove");
        let err = prepare(dir.path(), "10.9.9.9".parse().expect("ip")).expect_err("no CA key");
        let message = format!("{err:#}");
        assert!(
            message.contains("does not name 10.9.9.9") && message.contains("ca-key.pem"),
            "{message}"
        );
        std::fs::write(layout.ca_key(), ca_key).expect("put back");

        // One file gone: named, and nothing made over the others.
        std::fs::remove_file(&layout.client().cert).expect("remove");
        let err = prepare(dir.path(), "127.0.0.1".parse().expect("ip")).expect_err("incomplete");
        let message = format!("{err:#}");
        assert!(
            message.contains(&layout.client().cert.display().to_string())
                && message.contains("missing"),
            "{message}"
        );
        assert_eq!(std::fs::read(&node.ca).expect("ca"), ca, "the CA is kept");
        assert!(!layout.client().cert.exists());
    }
}
