//! Trellis as a client without the Rust crates sees it: a Python program
//! (grpcio, code generated from `proto/` at run time) reads error reasons
//! through gRPC's standard richer error model, and a reflection client
//! discovers the services without any `.proto` file (what `grpcurl` does).
//!
//! The Python test needs only `python3` (with its `venv` module): it makes
//! a virtual environment of its own under `target/` and installs
//! `examples/python/requirements.txt` into it from PyPI, once (again when
//! the requirements change), so the README's test command needs nothing
//! installed by hand. `PYTHON` names an interpreter that already has the
//! packages instead.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tonic_reflection::pb::v1 as reflection;
use tonic_reflection::pb::v1alpha as reflection_alpha;
use trellis_tests::harness::{Cluster, channel};

/// How long the Python example may run (it makes five calls; most of this
/// is interpreter start-up and code generation).
const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);
/// How often we look whether the Python process has exited.
const PYTHON_POLL: Duration = Duration::from_millis(50);

const INSTALL_HINT: &str = "python3 -m pip install -r examples/python/requirements.txt";
/// How long making the virtual environment and installing the pinned
/// packages may take (a download of about 60 MB on first use).
const VENV_TIMEOUT: Duration = Duration::from_secs(600);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

/// The interpreter to run the example with: `PYTHON` if set, else the
/// test's own virtual environment, made (and filled from the requirements
/// file) when missing or when the requirements changed since.
fn python() -> String {
    if let Ok(python) = std::env::var("PYTHON") {
        return python;
    }
    static VENV: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VENV.get_or_init(make_venv).clone()
}

fn make_venv() -> String {
    let requirements = repo_root().join("examples/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).expect("reading the requirements file");
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let python = venv.join("bin/python");
    // The requirements this environment was filled from, written last: a
    // half-made environment never counts as made.
    let stamp = venv.join("trellis-requirements.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|done| done == wanted) && python.exists() {
        return python.display().to_string();
    }
    let _ = std::fs::remove_dir_all(&venv);
    let step = |program: &std::path::Path, args: &[&str]| {
        let output = run_bounded(program.as_os_str(), args, VENV_TIMEOUT);
        assert!(
            output.status.success(),
            "{} {args:?} failed ({}); the Python client test needs python3 with \
             its venv module (Debian: apt-get install python3-venv) and PyPI, or \
             PYTHON=an interpreter that has run `{INSTALL_HINT}`:\n{}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    };
    step(
        std::path::Path::new("python3"),
        &["-m", "venv", venv.to_str().expect("utf-8 path")],
    );
    step(
        &python,
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            requirements.to_str().expect("utf-8 path"),
        ],
    );
    std::fs::write(&stamp, wanted).expect("writing the venv's stamp");
    python.display().to_string()
}

/// Runs `python <args>` in the repository root, killing it (by its PID,
/// which we started) after [`PYTHON_TIMEOUT`].
fn run_python(args: &[&str]) -> Output {
    run_bounded(python().as_ref(), args, PYTHON_TIMEOUT)
}

/// Runs `program <args>` in the repository root, killing it (by its PID,
/// which we started) after `timeout`.
fn run_bounded(program: &std::ffi::OsStr, args: &[&str], timeout: Duration) -> Output {
    let shown = program.to_string_lossy().into_owned();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}; install Python 3"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("waiting for python").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("python output");
            panic!(
                "{shown} {args:?} ran longer than {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(PYTHON_POLL);
    }
    child.wait_with_output().expect("python output")
}

/// Commit, read back, a CONFLICT abort, and an INVALID_ARGUMENT error whose
/// reason the Python program reads with `grpc_status.rpc_status.from_call`
/// and `google.rpc.ErrorInfo`. With the old raw `ErrorDetail` in the status
/// details, `from_call` raised ("Code in Status proto (StatusCode.UNKNOWN)
/// doesn't match status code (StatusCode.INVALID_ARGUMENT)").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reads_the_standard_error_model() {
    let imports = run_python(&["-c", "import grpc, grpc_tools, grpc_status"]);
    assert!(
        imports.status.success(),
        "the Python client test needs its packages: {INSTALL_HINT}\n{}",
        String::from_utf8_lossy(&imports.stderr)
    );

    let cluster = Cluster::start(2).await.expect("cluster starts");
    let output = run_python(&[
        "examples/python/trellis_example.py",
        "--addr",
        cluster.addr(0),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python example failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for expected in [
        "committed python:greeting",
        "read python:greeting = 'hello from python'",
        "aborted reason=CONFLICT keys=python:greeting",
        "error code=INVALID_ARGUMENT reason=INVALID_INPUT domain=trellis.dev",
        "transaction id must be exactly 16 bytes",
        "\nOK\n",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from the Python example's output:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// Service names listed by gRPC reflection v1 at `addr`.
async fn list_services(addr: &str) -> Vec<String> {
    use reflection::server_reflection_request::MessageRequest;
    use reflection::server_reflection_response::MessageResponse;
    let mut client = reflection::server_reflection_client::ServerReflectionClient::new(
        channel(addr).await.expect("connect"),
    );
    let request = reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 is served")
        .into_inner();
    match answers
        .message()
        .await
        .expect("an answer")
        .and_then(|a| a.message_response)
    {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

/// A tool that has no `.proto` file (grpcurl) asks the coordinator what it
/// serves, then for the file that defines `trellis.v1.Txn`, over reflection
/// v1; older tools ask v1alpha. A shard describes its own service too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_describes_the_services() {
    let cluster = Cluster::start(1).await.expect("cluster starts");
    let addr = cluster.addr(0);

    let services = list_services(addr).await;
    for name in ["trellis.v1.Txn", "trellis.v1.Admin"] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} not in {services:?}"
        );
    }
    assert!(
        !services.iter().any(|s| s == "trellis.shard.v1.Shard"),
        "the coordinator lists a service it does not serve: {services:?}"
    );

    // The descriptors grpcurl fetches to call Commit (`describe` and JSON
    // encoding): the service's and a message's.
    for symbol in ["trellis.v1.Txn", "trellis.v1.CommitRequest"] {
        use reflection::server_reflection_request::MessageRequest;
        use reflection::server_reflection_response::MessageResponse;
        let mut client = reflection::server_reflection_client::ServerReflectionClient::new(
            channel(addr).await.expect("connect"),
        );
        let request = reflection::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_string())),
        };
        let answer = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1")
            .into_inner()
            .message()
            .await
            .expect("an answer")
            .and_then(|a| a.message_response);
        match answer {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                assert!(
                    !files.file_descriptor_proto.is_empty(),
                    "{symbol}: no descriptor"
                );
            }
            other => panic!("no descriptor for {symbol}: {other:?}"),
        }
    }

    // v1alpha, for older tools.
    {
        use reflection_alpha::server_reflection_request::MessageRequest;
        use reflection_alpha::server_reflection_response::MessageResponse;
        let mut client = reflection_alpha::server_reflection_client::ServerReflectionClient::new(
            channel(addr).await.expect("connect"),
        );
        let request = reflection_alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let answer = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1alpha is served")
            .into_inner()
            .message()
            .await
            .expect("an answer")
            .and_then(|a| a.message_response);
        match answer {
            Some(MessageResponse::ListServicesResponse(list)) => assert!(
                list.service.iter().any(|s| s.name == "trellis.v1.Txn"),
                "{list:?}"
            ),
            other => panic!("not a service list: {other:?}"),
        }
    }

    let shard = cluster.shard(1, 1).expect("the shard of group 1");
    let services = list_services(shard.field("grpc")).await;
    assert!(
        services.iter().any(|s| s == "trellis.shard.v1.Shard"),
        "{services:?}"
    );
}
