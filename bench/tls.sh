#!/usr/bin/env bash
# What TLS costs (issue 23), measured in one run on this machine: w1-rmw
# and w3-read against a release `trellis dev --groups 3 --replicas 2`
# (SYNC), plaintext and with mutual TLS on every link (certificates made
# by `trellis cert` for this run), in rounds alternating the two modes. A
# round starts a fresh cluster, runs w1-rmw (which writes the keys as it
# goes), then w3-read over the same keys, and stops the cluster. For each
# workload and round: throughput, p50, p99, and the CPU of the dev tree and
# of the load tester per transaction. A `tls+auth` round also turns auth
# on (README "Security: users, roles and auth"): the load tester's client
# certificate is user `bench`, holding `admin` (`trellis load` reads the
# cluster's status, which needs it), so every request is authenticated and
# every Get and Commit authorized — at the shards, on the default direct
# route, as at the coordinator. Every mode takes the same route (ROUTE:
# `direct`, the default, or `coordinator`), so they differ by TLS and
# auth alone.
# It writes the table into docs/benchmarks.md, replacing its section.
# Nothing is asserted.
#
# Stops exactly what it started, by PID, on any exit (bench/lib.sh).
#
#   bench/tls.sh                          # DURATION=10s VUS=64 ROUNDS="plain tls+auth tls tls+auth plain tls"
#   DURATION=5s ROUNDS="plain tls" bench/tls.sh
#   ROUTE=coordinator bench/tls.sh        # every request through the coordinator
#   TRELLIS_BIN=target/release/trellis bench/tls.sh
#
# Needs: cargo (builds the release binary), python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
VUS=${VUS:-64}
ROUNDS=${ROUNDS:-"plain tls+auth tls tls+auth plain tls"}
KEYS=${KEYS:-100000}
ROUTE=${ROUTE:-direct}
case "$ROUTE" in direct | coordinator) ;; *) echo "error: ROUTE is direct or coordinator, not $ROUTE" >&2; exit 2 ;; esac
# How long a cluster may take to come up.
READY_SECONDS=60
DOC=docs/benchmarks.md
BEGIN_MARK='<!-- bench/tls.sh: begin (generated; edit the script, not this section) -->'
END_MARK='<!-- bench/tls.sh: end -->'

WORK=$(mktemp -d /tmp/trellis-tls-bench.XXXXXX)
source bench/lib.sh

for round in $ROUNDS; do
    case $round in
        plain | tls | tls+auth) ;;
        *) echo "error: ROUNDS: '$round' is not plain, tls or tls+auth" >&2; exit 2 ;;
    esac
done

log "certificates for this run in $WORK/certs"
"$TRELLIS" cert create-ca --dir "$WORK/certs" --cluster bench >/dev/null
"$TRELLIS" cert create-node --dir "$WORK/certs" --name node --host 127.0.0.1 --host localhost >/dev/null
"$TRELLIS" cert create-client --dir "$WORK/certs" --name bench >/dev/null
NODE_TLS=(--tls-ca "$WORK/certs/ca.pem" --tls-cert "$WORK/certs/node.pem" --tls-key "$WORK/certs/node-key.pem")
CLIENT_TLS=(--tls-ca "$WORK/certs/ca.pem" --tls-cert "$WORK/certs/bench.pem" --tls-key "$WORK/certs/bench-key.pem")

n=0
for round in $ROUNDS; do
    n=$((n + 1))
    dir="$WORK/round$n"
    mkdir -p "$dir"
    # dev runs TLS with its own CA unless told otherwise: plaintext rounds
    # say --insecure, the others give the bench CA's files.
    server_tls=(--insecure)
    client_tls=()
    if [[ $round != plain ]]; then
        server_tls=("${NODE_TLS[@]}")
        client_tls=("${CLIENT_TLS[@]}")
    fi
    port=$(free_port)
    addr="127.0.0.1:$port"
    log "round $n ($round): trellis dev --groups 3 --replicas 2 on $addr"
    "$TRELLIS" dev "${server_tls[@]}" --data-dir "$dir/data" --listen "$addr" --groups 3 \
        --replicas 2 >"$dir/dev.log" 2>&1 &
    dev_pid=$!
    PIDS+=("$dev_pid")
    for _ in $(seq 1 $((READY_SECONDS * 10))); do
        grep -q '^READY ' "$dir/dev.log" && break
        sleep 0.1
    done
    grep -q '^READY ' "$dir/dev.log" || { cat "$dir/dev.log" >&2; exit 1; }
    if [[ $round == tls+auth ]]; then
        # As a node (a superuser): the load tester's certificate names
        # user `bench`; make it an admin, then turn auth on.
        for step in "user add bench" "user grant bench admin" "admin auth enable"; do
            # shellcheck disable=SC2086 # the words of a step are its arguments
            "$TRELLIS" $step "${NODE_TLS[@]}" --addr "$addr" >>"$dir/auth.log" 2>&1 ||
                { cat "$dir/auth.log" >&2; exit 1; }
        done
        "$TRELLIS" admin auth status "${NODE_TLS[@]}" --addr "$addr" 2>&1 | tee -a "$dir/auth.log" |
            grep -q 'auth on' || { echo "error: auth is not on:" >&2; cat "$dir/auth.log" >&2; exit 1; }
    fi
    for workload in w1-rmw w3-read; do
        out="$dir/$workload"
        log "round $n ($round): $workload, $VUS VUs for $DURATION"
        tree_cpu_ticks "$dev_pid" >"$out.dev-before"
        client_cpu "$out.client-cpu" "$TRELLIS" load "${client_tls[@]}" --quiet --addr "$addr" \
            --route "$ROUTE" --workload "$workload" --keys "$KEYS" --vus "$VUS" \
            --duration "$DURATION" --summary-export "$out.json" >"$out.txt" 2>"$out.err" ||
            log "round $n $workload failed: $(tail -1 "$out.err")"
        tree_cpu_ticks "$dev_pid" >"$out.dev-after"
    done
    stop_pid "$dev_pid"
done

export WORK ROUNDS DURATION VUS KEYS ROUTE DOC BEGIN_MARK END_MARK
COMMIT=${TRELLIS_COMMIT:-$(git rev-parse --short HEAD)} python3 - <<'PY'
import json, os, statistics, subprocess
work, rounds = os.environ["WORK"], os.environ["ROUNDS"].split()
hz = os.sysconf("SC_CLK_TCK")
def num(path, default=None):
    try:
        return float(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return default
workloads = ["w1-rmw", "w3-read"]
rows = {w: [] for w in workloads}
for n, mode in enumerate(rounds, start=1):
    for w in workloads:
        base = f"{work}/round{n}/{w}"
        try:
            m = json.load(open(base + ".json"))["metrics"]
        except (OSError, ValueError):
            rows[w].append((n, mode, None)); continue
        it = m["iterations"]["values"]
        txns = it["count"]
        dev = (num(base + ".dev-after", 0) - num(base + ".dev-before", 0)) / hz
        client = num(base + ".client-cpu", 0)
        d = m["txn_duration"]["values"]
        failed = m.get("txn_failed", {}).get("values", {}).get("rate", 0.0)
        rows[w].append((n, mode, {
            "rate": it["rate"], "p50": d.get("p(50)", d.get("med", 0.0)), "p99": d.get("p(99)", 0.0),
            "dev_ms": dev * 1000 / txns if txns else 0, "client_ms": client * 1000 / txns if txns else 0,
            "txns": txns, "failed": failed}))
dur = os.environ["DURATION"]
date = subprocess.run(["date", "+%Y-%m-%d"], capture_output=True, text=True).stdout.strip()
load = open("/proc/loadavg").read().split()[:3]
lines = [os.environ["BEGIN_MARK"], "", "## What TLS costs (`bench/tls.sh`)", "",
         f"Run of {date}, commit {os.environ['COMMIT']}: `DURATION={dur} VUS={os.environ['VUS']} "
         f"ROUNDS=\"{os.environ['ROUNDS']}\" ROUTE={os.environ['ROUTE']} bench/tls.sh`.", "",
         f"- Machine: {os.cpu_count()} cores; the dev cluster and `trellis load` share it, on loopback "
         f"(load average at the end: {' '.join(load)}).",
         "- Each round: a fresh release `trellis dev --groups 3 --replicas 2` (SYNC), plaintext, with "
         "mutual TLS on every link (`trellis cert` files made for the run: one node certificate for every "
         "member, a client certificate for the load tester), or with TLS and auth on; w1-rmw (which writes the keys as it goes), "
         f"then w3-read over the same {int(os.environ['KEYS']):,} keys, {os.environ['VUS']} VUs and {dur} "
         "each, every round on the same route: " + ("the default direct route (reads and one-group commits "
         "straight to the shards' primaries, which check TLS and auth themselves)" if os.environ["ROUTE"] == "direct"
         else "through the coordinator (`--route coordinator`)") + ".",
         "- CPU per transaction: user+system of the whole `trellis dev` tree (dev CPU) and of the load "
         "tester (client CPU) over the workload's run, divided by its transactions.", ""]
verdicts = []
for w in workloads:
    lines += [f"| {w}: round | mode | it/s | p50 ms | p99 ms | failed | dev CPU ms/txn | client CPU ms/txn |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n, mode, r in rows[w]:
        if r is None:
            lines.append(f"| {n} | {mode} | failed | | | | | |"); continue
        lines.append(f"| {n} | {mode} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['failed']:.2%} | "
                     f"{r['dev_ms']:.3f} | {r['client_ms']:.3f} |")
    plain = [r["rate"] for _, m, r in rows[w] if m == "plain" and r]
    for mode, goal in (("tls", False), ("tls+auth", True)):
        secure = [r["rate"] for _, m, r in rows[w] if m == mode and r]
        if not (plain and secure):
            continue
        ratio = statistics.mean(secure) / statistics.mean(plain)
        verdict = f" ({'met' if ratio >= 0.85 else '**not met**'}: the goal is at most 15% lower, ≥ 0.85×)" if goal else ""
        verdicts.append(f"- {w}: {mode} / plaintext throughput (mean of the rounds) **{ratio:.2f}×**{verdict}.")
    lines.append("")
lines += ["*tls+auth*: auth on, the load tester's certificate is user `bench` (admin: `trellis load` "
          "reads the status); every request authenticated, every Get and Commit authorized once "
          "(`trellis_auth_checks_total`). Issue 23's goal (≤ 15% lower) is for TLS with auth.", ""] + verdicts
lines += ["", os.environ["END_MARK"]]
section = "\n".join(lines)
import sys; sys.path.insert(0, "bench"); from doc_section import write_section
write_section(section)
print(section)
PY
