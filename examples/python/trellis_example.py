#!/usr/bin/env python3
"""A Trellis client in Python, with nothing but grpcio and the .proto files.

It commits a transaction, reads it back, provokes a CONFLICT (an abort, which
Commit answers in its response) and an error status, whose reason it reads
the standard way: gRPC's richer error model, a google.rpc.Status holding a
google.rpc.ErrorInfo (grpc_status.rpc_status.from_call).

    python3 -m pip install -r examples/python/requirements.txt
    cargo run --release -- dev --insecure           # in another terminal (this example is plaintext)
    python3 examples/python/trellis_example.py --addr 127.0.0.1:50051

The Python code for trellis.v1 is generated from proto/ into a temporary
directory each run (grpc_tools.protoc), so nothing generated is checked in.
tests/tests/python_client.rs runs this script against a real cluster.
"""

import argparse
import os
import sys
import tempfile

try:
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    from grpc_tools import protoc
except ImportError as missing:
    sys.exit(
        f"missing Python package ({missing.name}): "
        "python3 -m pip install -r examples/python/requirements.txt"
    )

# Every call gets a deadline.
RPC_TIMEOUT_S = 10
# The proto/ directory of this repository.
PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
# The ErrorInfo.domain of every Trellis error.
TRELLIS_DOMAIN = "trellis.dev"


def generate(out_dir):
    """Compiles proto/trellis/v1/txn.proto into out_dir and imports it."""
    # grpc_tools ships google/protobuf/*.proto; Trellis's files need none.
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            "trellis/v1/txn.proto",
        ]
    )
    if code != 0:
        sys.exit(f"grpc_tools.protoc failed on {PROTO_DIR}/trellis/v1/txn.proto")
    sys.path.insert(0, out_dir)
    from trellis.v1 import txn_pb2, txn_pb2_grpc

    return txn_pb2, txn_pb2_grpc


def error_info(err):
    """The google.rpc.ErrorInfo of a failed call, or None."""
    status = rpc_status.from_call(err)  # raises if the details are not a google.rpc.Status
    if status is None:
        return None  # not answered by a Trellis server (e.g. connection refused)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == TRELLIS_DOMAIN:
                return info
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="a coordinator's HOST:PORT")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trellis-py-") as out_dir:
        pb, pb_grpc = generate(out_dir)
        with grpc.insecure_channel(args.addr) as channel:
            txn = pb_grpc.TxnStub(channel)
            run(pb, txn)
    print("OK")


def run(pb, txn):
    # 1. Commit a transaction: a blind write (no reads), 16 random id bytes.
    key = b"python:greeting"
    answer = txn.Commit(
        pb.CommitRequest(
            txn_id=os.urandom(16),
            writes=[pb.Write(key=key, put=b"hello from python")],
        ),
        timeout=RPC_TIMEOUT_S,
    )
    assert answer.WhichOneof("outcome") == "committed", answer
    version = answer.committed.written[0].version
    print(f"committed {key.decode()} version={version}")

    # 2. Read it back.
    item = txn.Get(pb.GetRequest(keys=[key]), timeout=RPC_TIMEOUT_S).items[0]
    print(f"read {item.key.decode()} = {item.value.decode()!r} version={item.version}")
    assert item.version == version, item

    # 3. A CONFLICT: commit a read of `key` at the version we saw, after
    #    someone else wrote it. Aborts are answers, not errors: re-read and
    #    retry with a new txn_id.
    txn.Commit(
        pb.CommitRequest(txn_id=os.urandom(16), writes=[pb.Write(key=key, put=b"changed")]),
        timeout=RPC_TIMEOUT_S,
    )
    answer = txn.Commit(
        pb.CommitRequest(
            txn_id=os.urandom(16),
            reads=[pb.Read(key=key, version=version)],
            writes=[pb.Write(key=b"python:copy", put=item.value)],
        ),
        timeout=RPC_TIMEOUT_S,
    )
    assert answer.WhichOneof("outcome") == "aborted", answer
    reason = pb.AbortReason.Name(answer.aborted.reason)
    keys = ", ".join(k.decode() for k in answer.aborted.keys)
    print(f"aborted reason={reason} keys={keys}")

    # 4. An error status: a transaction id that is not 16 bytes. The reason
    #    travels in a google.rpc.ErrorInfo; branch on it, not on the message.
    try:
        txn.Commit(pb.CommitRequest(txn_id=b"short"), timeout=RPC_TIMEOUT_S)
        sys.exit("a 5-byte transaction id was accepted")
    except grpc.RpcError as err:
        info = error_info(err)
        if info is None:
            raise
        print(
            f"error code={err.code().name} reason={info.reason} "
            f"domain={info.domain} message={err.details()!r}"
        )
        assert info.reason == pb.ErrorReason.Name(pb.INVALID_INPUT), info
        explain(info)


def explain(info):
    """What a client does for each ErrorReason (see the README's table)."""
    # Reasons are the names of trellis.v1.ErrorReason; new ones may appear.
    if info.reason == "OUTCOME_UNKNOWN":
        print(f"  may or may not have committed: ask TxnStatus({info.metadata['txn_id']})")
    elif info.reason == "INVALID_INPUT":
        print("  fix the request: the message names the limit")
    elif info.reason == "UNAVAILABLE":
        print("  retry after a backoff")
    else:
        print("  report it: the message says what went wrong")

if __name__ == "__main__":
    main()
