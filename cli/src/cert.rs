//! `trellis cert create-ca | create-node | create-client`: the files a TLS
//! cluster needs, made by `trellis_net::tls::issue` and written here
//! (never over an existing file without --force; keys mode 0600).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use trellis_net::tls::issue::{self, Pem};

/// File mode of a private key: its owner reads and writes, nobody else.
const KEY_FILE_MODE: u32 = 0o600;
/// File mode of a certificate: public.
const CERT_FILE_MODE: u32 = 0o644;

/// `trellis cert`: its help is on `Command::Cert` in main.rs.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

// The commands are `create-ca`, `create-node`, `create-client`: the
// prefix leaves room for later verbs (`show`, `rotate`).
#[allow(clippy::enum_variant_names)]
#[derive(clap::Subcommand, Debug)]
enum What {
    /// A new cluster CA: DIR/ca.pem and DIR/ca-key.pem.
    CreateCa {
        #[command(flatten)]
        out: Out,
        /// The cluster's name, written in the CA's subject.
        #[arg(long, default_value = "trellis")]
        cluster: String,
        /// How many days the CA is valid.
        #[arg(long, default_value_t = issue::CA_VALIDITY_DAYS)]
        days: i64,
    },
    /// A node certificate (coordinator or shard): DIR/NAME.pem and
    /// DIR/NAME-key.pem, signed by the CA.
    CreateNode {
        #[command(flatten)]
        out: Out,
        #[command(flatten)]
        ca: Ca,
        /// The node's name (carried as trellis://node/NAME).
        #[arg(long)]
        name: String,
        /// A host name or IP address peers dial this node by; repeat for
        /// each (e.g. --host 127.0.0.1 --host localhost --host db1.example).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// How many days the certificate is valid.
        #[arg(long, default_value_t = issue::LEAF_VALIDITY_DAYS)]
        days: i64,
    },
    /// A client certificate for a user or tool: DIR/NAME.pem and
    /// DIR/NAME-key.pem, signed by the CA.
    CreateClient {
        #[command(flatten)]
        out: Out,
        #[command(flatten)]
        ca: Ca,
        /// The user's name (carried as trellis://client/NAME).
        #[arg(long)]
        name: String,
        /// How many days the certificate is valid.
        #[arg(long, default_value_t = issue::LEAF_VALIDITY_DAYS)]
        days: i64,
    },
}

#[derive(clap::Args, Debug)]
struct Out {
    /// The directory the files are written into (made if missing).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Write the certificate here instead of DIR/NAME.pem.
    #[arg(long, value_name = "FILE")]
    cert_out: Option<PathBuf>,
    /// Write the key here instead of DIR/NAME-key.pem.
    #[arg(long, value_name = "FILE")]
    key_out: Option<PathBuf>,
    /// Replace files that exist (by default an existing file is an error:
    /// a CA overwritten by mistake orphans every certificate it signed).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct Ca {
    /// The CA's certificate [default: DIR/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// The CA's private key [default: DIR/ca-key.pem].
    #[arg(long, value_name = "FILE")]
    ca_key: Option<PathBuf>,
}

impl Ca {
    fn load(&self, dir: &Path) -> anyhow::Result<Pem> {
        let cert = self.ca_cert.clone().unwrap_or_else(|| dir.join("ca.pem"));
        let key = self
            .ca_key
            .clone()
            .unwrap_or_else(|| dir.join("ca-key.pem"));
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| {
                format!(
                    "reading the CA file {} (make a CA with `trellis cert create-ca`, or name \
                     it with --ca-cert and --ca-key)",
                    path.display()
                )
            })
        };
        Ok(Pem {
            cert: read(&cert)?,
            key: read(&key)?,
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let (out, stem, pem) = match args.what {
        What::CreateCa { out, cluster, days } => {
            let pem = issue::create_ca(&cluster, now, days)?;
            (out, "ca".to_string(), pem)
        }
        What::CreateNode {
            out,
            ca,
            name,
            hosts,
            days,
        } => {
            let pem = issue::create_node(&ca.load(&out.dir)?, &name, &hosts, now, days)?;
            (out, name, pem)
        }
        What::CreateClient {
            out,
            ca,
            name,
            days,
        } => {
            let pem = issue::create_client(&ca.load(&out.dir)?, &name, now, days)?;
            (out, name, pem)
        }
    };
    let cert = out
        .cert_out
        .clone()
        .unwrap_or_else(|| out.dir.join(format!("{stem}.pem")));
    let key = out
        .key_out
        .clone()
        .unwrap_or_else(|| out.dir.join(format!("{stem}-key.pem")));
    write_pair(&cert, &key, &pem, out.force)?;
    println!("wrote {} and {}", cert.display(), key.display());
    Ok(())
}

/// Writes a certificate and its key (mode 0600), making their directories;
/// without `force`, an existing file at either path refuses both before
/// either is written (never half a pair). `trellis dev` writes its own
/// files with it too.
pub(crate) fn write_pair(cert: &Path, key: &Path, pem: &Pem, force: bool) -> anyhow::Result<()> {
    if !force {
        for path in [cert, key] {
            if path.exists() {
                anyhow::bail!(
                    "{} exists; pass --force to replace it (every certificate made with the old \
                     file stops matching it)",
                    path.display()
                );
            }
        }
    }
    for path in [cert, key] {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("making the directory {}", parent.display()))?;
        }
    }
    write(key, &pem.key, KEY_FILE_MODE)?;
    write(cert, &pem.cert, CERT_FILE_MODE)
}

/// Writes `text` to `path` with `mode` (also when replacing a file that had
/// looser permissions).
fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> anyhow::Result<()> {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::try_parse_from(std::iter::once("cert").chain(args.iter().copied()))?;
        run(cli.args)
    }

    #[test]
    fn makes_a_ca_and_leaves_and_keeps_keys_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf-8");
        run_args(&["create-ca", "--dir", d]).expect("ca");
        run_args(&[
            "create-node",
            "--dir",
            d,
            "--name",
            "n1",
            "--host",
            "127.0.0.1",
        ])
        .expect("node");
        run_args(&["create-client", "--dir", d, "--name", "alice"]).expect("client");
        for stem in ["ca", "n1", "alice"] {
            let key = dir.path().join(format!("{stem}-key.pem"));
            let mode = std::fs::metadata(&key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, KEY_FILE_MODE, "{}", key.display());
            assert!(dir.path().join(format!("{stem}.pem")).exists());
        }
        // The leaves load as identities of the CA.
        let identity = trellis_net::tls::Identity::load(&trellis_net::tls::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("alice.pem"),
            key: dir.path().join("alice-key.pem"),
        })
        .expect("load");
        assert_eq!(
            identity.role(),
            &trellis_net::tls::PeerRole::Client("alice".into())
        );

        // Again without --force: refused, the CA unchanged.
        let before = std::fs::read(dir.path().join("ca.pem")).expect("read");
        let err = run_args(&["create-ca", "--dir", d]).expect_err("exists");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).expect("read"),
            before
        );
        run_args(&["create-ca", "--dir", d, "--force"]).expect("forced");
        assert_ne!(
            std::fs::read(dir.path().join("ca.pem")).expect("read"),
            before
        );
    }
}
