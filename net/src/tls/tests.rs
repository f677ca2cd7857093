//! Roles read from certificates `issue` makes, who may call internal
//! RPCs, loading identities, and real handshakes on loopback.

use std::path::Path;

use time::OffsetDateTime;
use tower::ServiceExt;

use super::issue::{self, Pem};
use super::*;

const DAYS: i64 = 30;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn ca(cluster: &str) -> Pem {
    issue::create_ca(cluster, now(), DAYS).expect("CA")
}

fn node(ca: &Pem, name: &str) -> Pem {
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    issue::create_node(ca, name, &hosts, now(), DAYS).expect("node cert")
}

fn client(ca: &Pem, name: &str) -> Pem {
    issue::create_client(ca, name, now(), DAYS).expect("client cert")
}

fn der(pem: &Pem) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.cert.as_bytes())
        .expect("PEM")
        .to_vec()
}

/// Writes `ca`'s certificate and `leaf` into `dir`; the files to load.
fn files(dir: &Path, ca: &Pem, leaf: &Pem) -> TlsFiles {
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.ca, &ca.cert).expect("write");
    std::fs::write(&files.cert, &leaf.cert).expect("write");
    std::fs::write(&files.key, &leaf.key).expect("write");
    files
}

fn identity(ca: &Pem, leaf: &Pem) -> Identity {
    let dir = tempfile::tempdir().expect("tempdir");
    Identity::load(&files(dir.path(), ca, leaf)).expect("load")
}

#[test]
fn an_identity_knows_when_its_certificates_expire() {
    let at = now().replace_nanosecond(0).expect("whole seconds");
    let ca = issue::create_ca("ours", at, 90).expect("CA");
    let leaf = issue::create_client(&ca, "alice", at, 7).expect("client cert");
    let expiry = identity(&ca, &leaf).expiry();
    let day = 86_400;
    assert_eq!(expiry.cert, at.unix_timestamp() + 7 * day);
    assert_eq!(expiry.ca, at.unix_timestamp() + 90 * day);
    assert_eq!(not_after(&der(&leaf)), Ok(expiry.cert));
    assert!(not_after(b"not a certificate").is_err());
}

#[test]
fn certificates_carry_the_role_they_were_made_for() {
    let ca = ca("test");
    assert_eq!(
        role_of(&der(&node(&ca, "shard-1"))),
        Ok(PeerRole::Node("shard-1".into()))
    );
    assert_eq!(
        role_of(&der(&client(&ca, "alice"))),
        Ok(PeerRole::Client("alice".into()))
    );
    // A CA carries no role; neither does a certificate made elsewhere.
    assert_eq!(role_of(&der(&ca)), Err(RoleError::NoRole));
    assert!(matches!(role_of(b"not DER"), Err(RoleError::Unparsable(_))));
}

#[test]
fn a_certificate_with_two_roles_has_none() {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    for uri in ["trellis://node/a", "trellis://client/b"] {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().expect("IA5")));
    }
    let cert = params.self_signed(&key).expect("cert");
    assert_eq!(role_of(cert.der()), Err(RoleError::SeveralRoles(2)));
}

#[test]
fn role_uris_are_read_strictly() {
    assert_eq!(
        parse_role_uri("trellis://node/n1"),
        Some(Ok(PeerRole::Node("n1".into())))
    );
    assert_eq!(parse_role_uri("https://example.com/x"), None);
    for bad in [
        "trellis://node/",
        "trellis://admin/x",
        "trellis://client/a/b",
        "trellis://node",
    ] {
        assert_eq!(
            parse_role_uri(bad),
            Some(Err(RoleError::BadUri(bad.into()))),
            "{bad}"
        );
    }
    assert!(check_name(&"x".repeat(NAME_BYTES_MAX)).is_ok());
    assert!(check_name(&"x".repeat(NAME_BYTES_MAX + 1)).is_err());
}

#[test]
fn internal_rpcs_admit_nodes_and_plaintext_only() {
    let node = Peer::Verified(PeerRole::Node("s1".into()));
    let client = Peer::Verified(PeerRole::Client("alice".into()));
    assert_eq!(check_node(None), Ok(()));
    assert_eq!(check_node(Some(&Peer::Plaintext)), Ok(()));
    assert_eq!(check_node(Some(&node)), Ok(()));
    let refused = check_node(Some(&client)).expect_err("a client");
    assert!(refused.contains("needs a node certificate"), "{refused}");
    assert!(refused.contains("client `alice`"), "{refused}");
    let refused = check_node(Some(&Peer::NoRole(RoleError::NoRole))).expect_err("no role");
    assert!(refused.contains("no Trellis role"), "{refused}");

    let mut request = tonic::Request::new(());
    request.extensions_mut().insert(accept::ConnectInfo {
        remote: None,
        peer: client,
    });
    let status = node_only(request).expect_err("a client");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[test]
fn loading_refuses_what_would_fail_every_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, theirs) = (ca("ours"), ca("theirs"));

    // A certificate of another CA: said at start.
    let files_other = files(dir.path(), &ours, &node(&theirs, "n1"));
    let err = Identity::load(&files_other)
        .expect_err("another CA")
        .to_string();
    assert!(err.contains("is not signed by a CA of"), "{err}");

    // A key of another certificate.
    let mine = node(&ours, "n1");
    let files_mixed = files(dir.path(), &ours, &mine);
    std::fs::write(&files_mixed.key, node(&ours, "n2").key).expect("write");
    let err = Identity::load(&files_mixed)
        .expect_err("wrong key")
        .to_string();
    assert!(err.contains("does not fit"), "{err}");

    // A missing file is named.
    let missing = TlsFiles {
        ca: dir.path().join("nope.pem"),
        ..files_mixed.clone()
    };
    let err = Identity::load(&missing).expect_err("missing").to_string();
    assert!(err.contains("nope.pem"), "{err}");

    // A CA bundle with no certificate in it.
    std::fs::write(&missing.ca, "hello").expect("write");
    let err = Identity::load(&missing).expect_err("empty").to_string();
    assert!(err.contains("holds no PEM certificate"), "{err}");

    let good = files(dir.path(), &ours, &mine);
    let identity = Identity::load(&good).expect("load");
    assert_eq!(identity.role(), &PeerRole::Node("n1".into()));
}

#[test]
fn signing_needs_the_cas_own_key() {
    let (ours, theirs) = (ca("ours"), ca("theirs"));
    let mixed = Pem {
        cert: ours.cert.clone(),
        key: theirs.key.clone(),
    };
    let err = issue::create_client(&mixed, "alice", now(), DAYS).expect_err("wrong key");
    assert!(matches!(err, issue::IssueError::CaKeyMismatch), "{err}");
    let leaf = client(&ours, "alice");
    let err = issue::create_client(&leaf, "bob", now(), DAYS).expect_err("not a CA");
    assert!(err.to_string().contains("not a CA"), "{err}");
    let err = issue::create_node(&ours, "n1", &[], now(), DAYS).expect_err("no host");
    assert!(err.to_string().contains("--host"), "{err}");
    let err = issue::create_ca("ours", now(), 0).expect_err("no days");
    assert!(err.to_string().contains("--days"), "{err}");
}

/// Dials a loopback server that terminates TLS with `server`, presenting
/// `client`: the peer the server saw, or the dial's and the accept's
/// errors.
async fn handshake(server: &Identity, client: &Identity) -> Result<Peer, (String, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let uri: tonic::transport::Uri = format!("http://{addr}").parse().expect("uri");
    let connector = dial::connector(client.client_config());
    let dial = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // TLS 1.3 servers judge the client's certificate after the client
        // thinks it is done: a refusal shows on the first read.
        let mut tls = connector.oneshot(uri).await?.into_inner();
        tls.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok::<_, std::io::Error>(())
    });
    let (stream, remote) = listener.accept().await.expect("accept");
    let accepted = accept::handshake(stream, remote, Some(server)).await;
    let peer = match accepted {
        Ok(mut conn) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.expect("read");
            conn.write_all(b"y").await.expect("write");
            Ok(conn.peer().clone())
        }
        Err(e) => Err(e.to_string()),
    };
    let dialled = dial.await.expect("join");
    match (peer, dialled) {
        (Ok(peer), Ok(())) => Ok(peer),
        (peer, dialled) => Err((
            dialled.err().map(|e| e.to_string()).unwrap_or_default(),
            peer.err().unwrap_or_default(),
        )),
    }
}

#[tokio::test]
async fn nodes_and_clients_of_the_ca_connect_and_others_do_not() {
    let (ours, theirs) = (ca("ours"), ca("theirs"));
    let server = identity(&ours, &node(&ours, "coordinator"));

    let peer = handshake(&server, &identity(&ours, &node(&ours, "shard-1")))
        .await
        .expect("a node of the CA");
    assert_eq!(peer, Peer::Verified(PeerRole::Node("shard-1".into())));
    let peer = handshake(&server, &identity(&ours, &client(&ours, "alice")))
        .await
        .expect("a client of the CA");
    assert_eq!(peer, Peer::Verified(PeerRole::Client("alice".into())));

    // A client whose certificate another CA signed: the server refuses it.
    let stranger = identity(&theirs, &client(&theirs, "mallory"));
    let (_, accept) = handshake(&server, &stranger).await.expect_err("another CA");
    assert!(accept.contains("TLS handshake failed"), "{accept}");

    // A server whose certificate another CA signed: the client refuses it,
    // and says it was TLS.
    let impostor = identity(&theirs, &node(&theirs, "coordinator"));
    let client = identity(&ours, &client(&ours, "alice"));
    let (dial, _) = handshake(&impostor, &client).await.expect_err("another CA");
    assert!(dial.contains("TLS handshake with 127.0.0.1"), "{dial}");
}

/// The files' contents, as a reload would read them.
fn pem_files(ca: &[&Pem], leaf: &Pem) -> PemFiles {
    let bundle = ca.iter().map(|c| c.cert.as_str()).collect::<String>();
    PemFiles {
        ca: Ok(bundle.into_bytes()),
        cert: Ok(leaf.cert.clone().into_bytes()),
        key: Ok(leaf.key.clone().into_bytes()),
    }
}

#[test]
fn a_poll_loads_new_files_once_they_have_settled_and_a_signal_at_once() {
    use reload::{Plan, Trigger, Watch};
    let ours = ca("ours");
    let (old, new) = (node(&ours, "n1"), node(&ours, "n1"));
    let installed = pem_files(&[&ours], &old);
    let mut watch = Watch::new(installed.clone());
    assert_eq!(watch.observe(Trigger::Poll, &installed), Plan::Unchanged);
    assert_eq!(watch.observe(Trigger::Signal, &installed), Plan::Unchanged);

    // The certificate is written, not yet its key: a poll waits, and
    // loads only what two polls in a row read.
    let half = PemFiles {
        cert: Ok(new.cert.clone().into_bytes()),
        ..installed.clone()
    };
    assert_eq!(watch.observe(Trigger::Poll, &half), Plan::Settling);
    let whole = pem_files(&[&ours], &new);
    assert_eq!(watch.observe(Trigger::Poll, &whole), Plan::Settling);
    assert_eq!(watch.observe(Trigger::Poll, &whole), Plan::Load);
    watch.loaded(whole.clone(), true);
    assert_eq!(watch.observe(Trigger::Poll, &whole), Plan::Unchanged);

    // SIGHUP: the operator says the files are ready.
    let again = pem_files(&[&ours], &old);
    assert_eq!(watch.plan(Trigger::Signal, &again), Plan::Load);
}

#[test]
fn refused_files_are_said_once_until_they_change_or_a_signal_asks() {
    use reload::{Plan, Trigger, Watch};
    let ours = ca("ours");
    let good = node(&ours, "n1");
    let installed = pem_files(&[&ours], &good);
    let mut watch = Watch::new(installed.clone());
    let missing = PemFiles {
        key: Err("No such file or directory".into()),
        ..installed.clone()
    };
    assert_eq!(watch.observe(Trigger::Poll, &missing), Plan::Settling);
    assert_eq!(watch.observe(Trigger::Poll, &missing), Plan::Load);
    watch.loaded(missing.clone(), false);
    for _ in 0..3 {
        assert_eq!(watch.observe(Trigger::Poll, &missing), Plan::AlreadyRefused);
    }
    assert_eq!(watch.observe(Trigger::Signal, &missing), Plan::Load);
    // Fixed: loaded at the next settled poll.
    let fixed = pem_files(&[&ours], &node(&ours, "n1"));
    assert_eq!(watch.observe(Trigger::Poll, &fixed), Plan::Settling);
    assert_eq!(watch.observe(Trigger::Poll, &fixed), Plan::Load);
    // Put back as they were: nothing to do, and nothing remembered.
    assert_eq!(watch.observe(Trigger::Poll, &installed), Plan::Unchanged);
}

#[test]
fn a_reload_keeps_the_role_and_names_the_file_it_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, theirs) = (ca("ours"), ca("theirs"));
    let n1 = PeerRole::Node("n1".into());
    let files = files(dir.path(), &ours, &node(&ours, "n1"));
    let load = |pem: &PemFiles| Identity::from_pem(&files, pem);

    let renewed = load(&pem_files(&[&ours], &node(&ours, "n1")));
    let identity = reload::check_replacement(&n1, &files, renewed).expect("a renewal");
    assert_eq!(identity.role(), &n1);

    // A client certificate in a node's place.
    let client = load(&pem_files(&[&ours], &client(&ours, "alice")));
    let err = reload::check_replacement(&n1, &files, client)
        .expect_err("node to client")
        .to_string();
    assert!(
        err.contains("cert.pem") && err.contains("client `alice`"),
        "{err}"
    );
    assert!(err.contains("runs as node `n1`"), "{err}");

    // Another node's name is another role too.
    let other = load(&pem_files(&[&ours], &node(&ours, "n2")));
    assert!(reload::check_replacement(&n1, &files, other).is_err());

    // Signed by a CA the bundle does not hold.
    let stranger = load(&pem_files(&[&ours], &node(&theirs, "n1")));
    let err = reload::check_replacement(&n1, &files, stranger)
        .expect_err("another CA")
        .to_string();
    assert!(
        err.contains("is not signed by a CA of") && err.contains("ca.pem"),
        "{err}"
    );

    // A key that is not the certificate's.
    let mut mixed = pem_files(&[&ours], &node(&ours, "n1"));
    mixed.key = Ok(node(&ours, "n1").key.into_bytes());
    let err = reload::check_replacement(&n1, &files, load(&mixed))
        .expect_err("wrong key")
        .to_string();
    assert!(
        err.contains("does not fit") && err.contains("key.pem"),
        "{err}"
    );

    // Garbage, and a file that cannot be read.
    let mut garbage = pem_files(&[&ours], &node(&ours, "n1"));
    garbage.ca = Ok(b"not PEM".to_vec());
    let err = reload::check_replacement(&n1, &files, load(&garbage))
        .expect_err("garbage")
        .to_string();
    assert!(
        err.contains("ca.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    garbage.ca = Err("Permission denied".into());
    let err = reload::check_replacement(&n1, &files, load(&garbage))
        .expect_err("unreadable")
        .to_string();
    assert!(
        err.contains("ca.pem") && err.contains("Permission denied"),
        "{err}"
    );
}

#[test]
fn a_bundle_of_two_cas_names_the_first_to_expire() {
    let at = now().replace_nanosecond(0).expect("whole seconds");
    let old = issue::create_ca("old", at, 30).expect("CA");
    let new = issue::create_ca("new", at, 3650).expect("CA");
    let leaf = issue::create_node(&new, "n1", &["127.0.0.1".into()], at, 7).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = files(dir.path(), &new, &leaf);
    for bundle in [[&new, &old], [&old, &new]] {
        let identity = Identity::from_pem(&files, &pem_files(&bundle, &leaf)).expect("load");
        let expiry = identity.expiry();
        assert_eq!(expiry.ca_count, 2);
        assert_eq!(expiry.ca, at.unix_timestamp() + 30 * 86_400);
        assert!(expiry.ca_subject.contains("old"), "{expiry:?}");
        assert!(expiry.cert_subject.contains("n1"), "{expiry:?}");
    }
}

/// During a CA rotation a server trusts a bundle of the old and the new
/// CA: clients of either connect; once the bundle is the new CA alone, a
/// client of the old one is refused.
#[tokio::test]
async fn a_bundle_of_two_cas_trusts_both_and_then_only_the_one_left() {
    let (old, new) = (ca("old"), ca("new"));
    let dir = tempfile::tempdir().expect("tempdir");
    let server_leaf = node(&new, "coordinator");
    let files = files(dir.path(), &new, &server_leaf);
    let both = Identity::from_pem(&files, &pem_files(&[&old, &new], &server_leaf)).expect("both");
    let trusting =
        |leaf: &Pem| Identity::from_pem(&files, &pem_files(&[&old, &new], leaf)).expect("a client");
    let old_client = trusting(&client(&old, "alice"));
    let new_client = trusting(&client(&new, "alice"));
    for client in [&old_client, &new_client] {
        let peer = handshake(&both, client).await.expect("trusted");
        assert_eq!(peer, Peer::Verified(PeerRole::Client("alice".into())));
    }
    let only_new = identity(&new, &server_leaf);
    handshake(&only_new, &new_client)
        .await
        .expect("the new CA's client");
    let (_, accept) = handshake(&only_new, &old_client)
        .await
        .expect_err("the old CA's client");
    assert!(accept.contains("TLS handshake failed"), "{accept}");
}

#[test]
fn what_a_reload_read_never_shows_the_key_in_debug() {
    let ours = ca("ours");
    let leaf = node(&ours, "n1");
    let read = pem_files(&[&ours], &leaf);
    let shown = format!("{read:?} {:?}", reload::Watch::new(read.clone()));
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let body = leaf.key.lines().nth(1).expect("a key line");
    assert!(!shown.contains(body), "{shown}");
    assert!(shown.contains("bytes"), "{shown}");
}
