#!/usr/bin/env bash
# The change feed's cost and pace (issue 22), measured in one run on this
# machine: w1-rmw against a release `trellis dev --groups 3 --replicas 2`
# (SYNC), in rounds alternating without a feed and with one `trellis cdc`
# into NATS JetStream (127.0.0.1:4222, a subject of its own) started before
# the load, from now. For each round: throughput and p99 of the load, the
# CPU of the dev tree and of `trellis cdc`; with the feed, the events the
# sink took (`trellis_cdc_events_total`) against the transactions the load
# committed, the feed's rate during the load, how long it took after the
# load to catch up (`trellis_cdc_lag_records` 0 on every group), and the
# highest `trellis_cdc_lag_seconds` seen (sampled every 0.2 s). Then, on
# the same cluster with no `trellis cdc`, `trellis bench feed` measures
# commit-to-emit latency (commit acknowledged to event at a watcher, in one
# process) at LATENCY_RATES commits/s. It writes both tables into
# docs/benchmarks.md, replacing its section. Nothing is asserted.
#
# Stops exactly what it started, by PID, on any exit (bench/lib.sh); the
# JetStream stream it made is deleted by the python helper at the end.
#
#   bench/cdc.sh                     # DURATION=10s VUS=64 ROUNDS="off on off on" LATENCY_RATES=1000,5000
#   DURATION=5s ROUNDS="off on" bench/cdc.sh
#   ROUNDS="off stdout on off stdout on" bench/cdc.sh   # stdout: the feed without a broker
#   TRELLIS_BIN=target/release/trellis bench/cdc.sh
#
# Needs: cargo (builds the release binary), curl, python3, NATS with
# JetStream on 127.0.0.1:4222.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
VUS=${VUS:-64}
ROUNDS=${ROUNDS:-"off on off on"}
KEYS=${KEYS:-100000}
NATS=${NATS:-127.0.0.1:4222}
LATENCY_RATES=${LATENCY_RATES:-1000,5000}
# How long a cluster may take to come up; how long the feed may take to
# catch up after a load.
READY_SECONDS=60
CATCH_UP_SECONDS=60
DOC=docs/benchmarks.md
BEGIN_MARK='<!-- bench/cdc.sh: begin (generated; edit the script, not this section) -->'
END_MARK='<!-- bench/cdc.sh: end -->'

WORK=$(mktemp -d /tmp/trellis-cdc-bench.XXXXXX)
source bench/lib.sh
command -v curl >/dev/null || { echo "error: curl is needed" >&2; exit 1; }

# A metric's value (sum over the series whose name and labels start with
# PREFIX) from /metrics at ADDR.
metric_sum() { # addr prefix
    curl -sf --max-time 5 "http://$1/metrics" |
        awk -v p="$2" 'index($0, p) == 1 { s += $NF } END { printf "%.0f\n", s }'
}
metric_max() { # addr prefix
    curl -sf --max-time 5 "http://$1/metrics" |
        awk -v p="$2" 'index($0, p) == 1 && $NF > m { m = $NF } END { printf "%.3f\n", m + 0 }'
}

port=$(free_port)
addr="127.0.0.1:$port"
log "trellis dev --groups 3 --replicas 2 on $addr"
"$TRELLIS" dev --insecure --data-dir "$WORK/data" --listen "$addr" --groups 3 --replicas 2 >"$WORK/dev.log" 2>&1 &
dev_pid=$!
PIDS+=("$dev_pid")
for _ in $(seq 1 $((READY_SECONDS * 10))); do
    grep -q '^READY ' "$WORK/dev.log" && break
    sleep 0.1
done
grep -q '^READY ' "$WORK/dev.log" || { cat "$WORK/dev.log" >&2; exit 1; }
subject="trellis-bench-cdc.$$"
nats_pid=$(pgrep -x nats-server | head -1 || true)
[[ -n $nats_pid ]] || log "no nats-server process found here: its CPU is not reported"
n=0
for round in $ROUNDS; do
    n=$((n + 1))
    out="$WORK/round$n"
    cdc_pid=""
    case $round in
        off) ;;
        on) sink="nats://$NATS/$subject" ;;
        stdout) sink=stdout ;;
        *) echo "error: ROUNDS: '$round' is not off, on (NATS) or stdout" >&2; exit 2 ;;
    esac
    if [[ $round != off ]]; then
        mport=$(free_port)
        maddr="127.0.0.1:$mport"
        "$TRELLIS" cdc --addr "$addr" --sink "$sink" --from now \
            --metrics-listen "$maddr" >/dev/null 2>"$out.cdc.log" &
        cdc_pid=$!
        PIDS+=("$cdc_pid")
        for _ in $(seq 1 50); do
            curl -sf --max-time 1 "http://$maddr/metrics" >/dev/null 2>&1 && break
            sleep 0.1
        done
        echo "$maddr" >"$out.maddr"
        # The highest lag in seconds, sampled while the load runs.
        (while kill -0 "$cdc_pid" 2>/dev/null; do
            metric_max "$maddr" 'trellis_cdc_lag_seconds' || true
            sleep 0.2
        done) >"$out.lag" 2>/dev/null &
        PIDS+=("$!")
        sleep 1
        metric_sum "$maddr" 'trellis_cdc_events_total' >"$out.events-before"
    fi
    log "round $n: w1-rmw, feed $round, $VUS VUs for $DURATION"
    tree_cpu_ticks "$dev_pid" >"$out.dev-before"
    [[ -n $cdc_pid ]] && tree_cpu_ticks "$cdc_pid" >"$out.cdc-before"
    # The NATS server is not ours (only read, never signalled); its CPU
    # counts in every round, with and without the feed.
    [[ -n $nats_pid ]] && tree_cpu_ticks "$nats_pid" >"$out.nats-before"
    "$TRELLIS" load --quiet --addr "$addr" --workload w1-rmw --keys "$KEYS" --vus "$VUS" \
        --duration "$DURATION" --summary-export "$out.json" >"$out.txt" 2>"$out.err" ||
        log "round $n failed: $(tail -1 "$out.err")"
    tree_cpu_ticks "$dev_pid" >"$out.dev-after"
    [[ -n $nats_pid ]] && tree_cpu_ticks "$nats_pid" >"$out.nats-after"
    if [[ -n $cdc_pid ]]; then
        tree_cpu_ticks "$cdc_pid" >"$out.cdc-after"
        metric_sum "$maddr" 'trellis_cdc_events_total' >"$out.events-load"
        start=$(date +%s.%N)
        caught=""
        for _ in $(seq 1 $((CATCH_UP_SECONDS * 10))); do
            lag=$(metric_sum "$maddr" 'trellis_cdc_lag_records' || echo 1)
            if [[ $lag == 0 ]]; then caught=1; break; fi
            sleep 0.1
        done
        end=$(date +%s.%N)
        [[ -n $caught ]] && python3 -c "print($end - $start)" >"$out.catch-up"
        metric_sum "$maddr" 'trellis_cdc_events_total' >"$out.events-after"
        stop_pid "$cdc_pid"
    fi
done

log "commit-to-emit latency at $LATENCY_RATES commits/s for $DURATION each"
"$TRELLIS" bench feed --addr "$addr" --seconds "${DURATION%s}" --rate "$LATENCY_RATES" \
    >"$WORK/latency.txt" 2>"$WORK/latency.err" || log "bench feed failed: $(tail -1 "$WORK/latency.err")"

export WORK ROUNDS DURATION VUS DOC BEGIN_MARK END_MARK NATS subject LATENCY_RATES
COMMIT=${TRELLIS_COMMIT:-$(git rev-parse --short HEAD)} python3 - <<'PY'
import json, os, subprocess
work, rounds = os.environ["WORK"], os.environ["ROUNDS"].split()
hz = os.sysconf("SC_CLK_TCK")
def num(path, default=None):
    try:
        return float(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return default
rows = []
for n, feed in enumerate(rounds, start=1):
    base = f"{work}/round{n}"
    try:
        m = json.load(open(base + ".json"))["metrics"]
    except (OSError, ValueError):
        rows.append((n, feed, None)); continue
    it = m["iterations"]["values"]
    txns = it["count"]
    dev_cpu = (num(base + ".dev-after") - num(base + ".dev-before")) / hz
    r = {"rate": it["rate"], "p99": m["txn_duration"]["values"].get("p(99)", 0.0),
         "txns": txns, "dev_cpu_ms": dev_cpu * 1000 / txns if txns else 0}
    nats_cpu = num(base + ".nats-after")
    r["nats_cpu_ms"] = (None if nats_cpu is None or not txns else
                        (nats_cpu - num(base + ".nats-before", nats_cpu)) / hz * 1000 / txns)
    if feed != "off":
        cdc_cpu = (num(base + ".cdc-after", 0) - num(base + ".cdc-before", 0)) / hz
        before = num(base + ".events-before", 0)
        r["events"] = num(base + ".events-after", 0) - before
        r["events_load"] = num(base + ".events-load", 0) - before
        r["catch_up"] = num(base + ".catch-up")
        lags = [float(x) for x in open(base + ".lag").read().split() if x.strip()] if os.path.exists(base + ".lag") else []
        r["lag_max"] = max(lags) if lags else None
        r["cdc_cpu_ms"] = cdc_cpu * 1000 / txns if txns else 0
    rows.append((n, feed, r))
dur = os.environ["DURATION"]
lines = [os.environ["BEGIN_MARK"], "", "## The change feed's cost and pace (`bench/cdc.sh`)", "",
         f"Run of {subprocess.run(['date', '+%Y-%m-%d'], capture_output=True, text=True).stdout.strip()}, "
         f"commit {os.environ['COMMIT']}: `DURATION={dur} VUS={os.environ['VUS']} ROUNDS=\"{os.environ['ROUNDS']}\" bench/cdc.sh`.",
         "",
         f"- Machine: {os.cpu_count()} cores; every process (the dev cluster, `trellis load`, `trellis cdc`, "
         "NATS) shares it, on loopback.",
         "- Release `trellis dev --groups 3 --replicas 2`, SYNC; w1-rmw (one read-modify-write of one key "
         f"per iteration: one one-group transaction, one feed event), {os.environ['VUS']} VUs, {dur} per round. "
         "*feed on*: one `trellis cdc --sink nats://…` (JetStream, publish acks awaited) from now, started "
         "1 s before the load; *stdout*: the same into `--sink stdout` sent to /dev/null (the feed's own "
         "cost, no broker).",
         "- *events*: what the sink took for the round's transactions, during the load and in all; "
         "*catch-up*: seconds after the load until every group's lag in records was 0; *lag max*: the "
         "highest `trellis_cdc_lag_seconds` sampled every 0.2 s (seconds since a group was last fully "
         "caught up; not a latency: see `trellis bench feed` below). CPU: user+system of the process trees over the load, per transaction "
         "(the NATS server's too, which runs in every round).",
         "",
         "| round | feed | w1-rmw it/s | p99 ms | dev CPU ms/txn | cdc CPU ms/txn | NATS CPU ms/txn | events / txns | events/s during load | catch-up s | lag max s |",
         "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
secs = float(dur.rstrip("s"))
for n, feed, r in rows:
    if r is None:
        lines.append(f"| {n} | {feed} | failed | | | | | | | | |"); continue
    nc = "-" if r["nats_cpu_ms"] is None else f"{r['nats_cpu_ms']:.3f}"
    if feed != "off":
        cu = "-" if r["catch_up"] is None else f"{r['catch_up']:.1f}"
        lm = "-" if r["lag_max"] is None else f"{r['lag_max']:.2f}"
        lines.append(f"| {n} | {feed} | {r['rate']:,.0f} | {r['p99']:.1f} | {r['dev_cpu_ms']:.3f} | {r['cdc_cpu_ms']:.3f} | {nc} | "
                     f"{r['events']:,.0f} / {r['txns']:,.0f} | {r['events_load'] / secs:,.0f} | {cu} | {lm} |")
    else:
        lines.append(f"| {n} | off | {r['rate']:,.0f} | {r['p99']:.1f} | {r['dev_cpu_ms']:.3f} | | {nc} | | | | |")
off = [r["rate"] for _, f, r in rows if f == "off" and r]
on = [r["rate"] for _, f, r in rows if f == "on" and r]
if off and on:
    ratio = (sum(on) / len(on)) / (sum(off) / len(off))
    lines += ["", f"w1-rmw with the feed into NATS / without (mean of the rounds): {ratio:.2f}× "
              f"(issue 22's goal: at most 10% lower, i.e. ≥ 0.90×: {'met' if ratio >= 0.9 else '**not met**'})."]
out_ = [r["rate"] for _, f, r in rows if f == "stdout" and r]
if off and out_:
    ratio = (sum(out_) / len(out_)) / (sum(off) / len(off))
    lines += ["", f"w1-rmw with the feed into stdout (no broker) / without: {ratio:.2f}×."]
lines += ["", "Commit-to-emit latency (`trellis bench feed`, same cluster, no `trellis cdc`): one watch "
          "from now and one-key commits started on a clock at each rate for "
          f"{dur}; latency from the commit's acknowledgement to its event at the watcher, both in one "
          "process (0 when the event came first).", ""]
try:
    out = open(f"{work}/latency.txt").read().splitlines()
except OSError:
    out = []
rows_l = [l.split() for l in out if l.strip() and l.split()[0].isdigit()]
if rows_l:
    lines += ["| rate /s | commits/s | missed | errors | events/s | events / commits | p50 ms | p99 ms | max ms |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows_l]
else:
    lines.append("(`trellis bench feed` failed in this run; see the script's log.)")
lines += ["", os.environ["END_MARK"]]
section = "\n".join(lines)
import sys; sys.path.insert(0, "bench"); from doc_section import write_section
write_section(section)
print(section)
# The JetStream stream `trellis cdc` made for this run's subject.
try:
    import socket
    host, port = os.environ["NATS"].split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    s.recv(4096)
    name = "TRELLIS_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in os.environ["subject"])
    s.sendall(f"CONNECT {{\"verbose\":false}}\r\nPUB $JS.API.STREAM.DELETE.{name} 0\r\n\r\nPING\r\n".encode())
    s.recv(4096)
    s.close()
except OSError:
    pass
PY
