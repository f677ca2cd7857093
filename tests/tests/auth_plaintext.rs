//! Auth on a cluster without TLS (issue 23): passwords and tokens would
//! cross the network in the clear, so the coordinator refuses to turn
//! auth on and refuses passwords — each with a message saying so — and
//! changes nothing. (Its own binary: the TLS tests install a client
//! identity for their whole process.)

use trellis_tests::cluster::TestCluster;
use trellis_tests::harness::{printed, run_trellis};

/// The story: on a plaintext cluster an admin user can be set up
/// (certificate-only users need no password), but `trellis admin auth
/// enable` is refused naming TLS, and so is a user with a password; auth
/// stays off and the password-less user is the only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_cluster_refuses_auth_and_passwords() {
    let cluster = TestCluster::start(1).await.expect("a plaintext cluster");
    let addr = cluster.addr(0).to_string();
    let run = |args: &[&str]| run_trellis(&[args, &["--addr", addr.as_str()][..]].concat());
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", printed(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["user", "add", "root"]);
    ok(&["user", "grant", "root", "admin"]);

    let out = run(&["admin", "auth", "enable"]);
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without TLS"), "{}", printed(&out));

    let out = std::process::Command::new(trellis_tests::harness::trellis_bin())
        .args(["user", "add", "bob", "--addr", &addr])
        .env("TRELLIS_NEW_PASSWORD", "a-password-in-the-clear")
        .output()
        .expect("trellis runs");
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without TLS"),
        "{}",
        printed(&out)
    );

    assert!(ok(&["admin", "auth", "status"]).contains("auth off; TLS off; 1 users, 1 admins"));
    let list = ok(&["user", "list"]);
    assert!(!list.contains("bob"), "{list}");
}
