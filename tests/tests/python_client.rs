//! Trellis as a client without the Rust crates sees it: a Python program
//! (grpcio, code generated from `proto/` at run time) reads error reasons
//! through gRPC's standard richer error model, and a reflection client
//! discovers the services without any `.proto` file (what `grpcurl` does).
//!
//! The Python test needs `python3` with the packages of
//! `examples/python/requirements.txt`; without them it fails and says how to
//! install them (CI installs them first). `PYTHON` picks another interpreter.

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

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Runs `python <args>` in the repository root, killing it (by its PID,
/// which we started) after [`PYTHON_TIMEOUT`].
fn run_python(args: &[&str]) -> Output {
    let mut child = Command::new(python())
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; install Python 3", python()));
    let deadline = Instant::now() + PYTHON_TIMEOUT;
    while child.try_wait().expect("waiting for python").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("python output");
            panic!(
                "python {args:?} ran longer than {PYTHON_TIMEOUT:?}; stderr:\n{}",
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

    let shard = cluster.shards[0].as_ref().expect("the shard of group 1");
    let services = list_services(shard.field("grpc")).await;
    assert!(
        services.iter().any(|s| s == "trellis.shard.v1.Shard"),
        "{services:?}"
    );
}
