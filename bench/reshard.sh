#!/usr/bin/env bash
# Online resharding under load, measured in one run on this machine:
#   1. a release `trellis dev --groups 3 --replicas 2` (SYNC) is filled by
#      w1-rmw over $KEYS keys;
#   2. baseline: w1-rmw at $VUS VUs for $DURATION, nothing moving;
#   3. `trellis dev add-group` adds group 4, and the same w1-rmw runs
#      again while `trellis admin rebalance --wait` moves its share to it.
# It reports the per-batch pause (freeze to flip, from the coordinator's
# `trellis_reshard_pause_seconds` histogram and the job's longest), how
# long the rebalance took and what it copied, and the load's throughput,
# p50, p99 and failures during the move as ratios to the baseline run —
# into docs/benchmarks.md, replacing its section. Nothing is asserted.
#
# Stops exactly what it started, by PID, on any exit (trap EXIT).
#
#   bench/reshard.sh                          # DURATION=30s VUS=64 KEYS=100000
#   TRELLIS_BIN=target/release/trellis bench/reshard.sh   # skip the build
#
# Needs: cargo (builds the release binary), python3 for the table.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30s}
VUS=${VUS:-64}
KEYS=${KEYS:-100000}
FILL=${FILL:-20s}
# How long a server may take to come up.
READY_SECONDS=60
DOC=docs/benchmarks.md
BEGIN_MARK='<!-- bench/reshard.sh: begin (generated; edit the script, not this section) -->'
END_MARK='<!-- bench/reshard.sh: end -->'

log() { printf '== %s\n' "$*" >&2; }

PIDS=()
WORK=$(mktemp -d /tmp/trellis-reshard-bench.XXXXXX)
cleanup() {
    local rc=$?
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        local pid=${PIDS[i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

if [[ -n ${TRELLIS_BIN:-} ]]; then
    TRELLIS=$TRELLIS_BIN
else
    log "building the release binary"
    cargo build --release --bin trellis >&2
    TRELLIS=target/release/trellis
fi

PORT=$(free_port)
ADDR="127.0.0.1:$PORT"
log "trellis dev --groups 3 --replicas 2 on $ADDR"
"$TRELLIS" dev --data-dir "$WORK/data" --listen "$ADDR" --groups 3 --replicas 2 \
    >"$WORK/dev.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 $((READY_SECONDS * 10))); do
    grep -q '^READY ' "$WORK/dev.log" && break
    sleep 0.1
done
grep -q '^READY ' "$WORK/dev.log" || { cat "$WORK/dev.log" >&2; exit 1; }

load() { # name duration
    "$TRELLIS" load --quiet --addr "$ADDR" --workload w1-rmw --keys "$KEYS" \
        --vus "$VUS" --duration "$2" --key-prefix reshard-bench \
        --summary-export "$WORK/$1.json" >"$WORK/$1.txt"
}

log "filling $KEYS keys (w1-rmw for $FILL)"
load fill "$FILL"
log "baseline: w1-rmw, $VUS VUs, $DURATION, nothing moving"
load baseline "$DURATION"

log "adding group 4"
"$TRELLIS" dev add-group --data-dir "$WORK/data" >&2

log "w1-rmw again while group 4 takes its share (trellis admin rebalance --wait)"
load moving "$DURATION" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
sleep 2
start=$(date +%s.%N)
"$TRELLIS" admin rebalance --wait --addr "$ADDR" >"$WORK/rebalance.txt"
end=$(date +%s.%N)
wait "$LOAD_PID"
tail -1 "$WORK/rebalance.txt" >&2
"$TRELLIS" admin reshard list --format json --addr "$ADDR" >"$WORK/jobs.json"
METRICS=$(python3 -c '
import json, sys
for t in json.load(open(sys.argv[1])):
    if t["labels"]["job"] == "trellis-coordinator":
        print(t["targets"][0])' "$WORK/data/prometheus-targets.json")
curl -s "http://$METRICS/metrics" >"$WORK/metrics.txt"

log "writing $DOC"
export WORK DURATION VUS KEYS DOC BEGIN_MARK END_MARK
export REBALANCE_S=$(python3 -c "print(round($end - $start, 1))")
export MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
export TRELLIS_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
python3 - <<'PY'
import json, os, datetime, re
work = os.environ["WORK"]

def result(name):
    m = json.load(open(f"{work}/{name}.json"))["metrics"]
    return {
        "rate": m["iterations"]["values"]["rate"],
        "p50": m["txn_duration"]["values"]["med"],
        "p99": m["txn_duration"]["values"]["p(99)"],
        "failed": m["txn_failed"]["values"]["rate"],
    }

base, moving = result("baseline"), result("moving")
jobs = json.load(open(f"{work}/jobs.json"))
jobs = jobs if isinstance(jobs, list) else jobs.get("jobs", [])
job = max(jobs, key=lambda j: j["id"])

# The pause histogram: quantiles as the upper bound of the bucket reached.
buckets, count = [], 0
for line in open(f"{work}/metrics.txt"):
    m = re.match(r'trellis_reshard_pause_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float(m.group(1)), float(m.group(2))))
    m = re.match(r"trellis_reshard_pause_seconds_count (\S+)", line)
    if m:
        count = float(m.group(1))
def quantile(q):
    for le, c in buckets:
        if c >= q * count:
            return le
    return float("inf")
def ms(seconds):
    return "≤ %g ms" % (seconds * 1000)

lines = [os.environ["BEGIN_MARK"], "",
    "## Online resharding under load (`bench/reshard.sh`)", "",
    f"Run of {datetime.date.today().isoformat()}, commit {os.environ['TRELLIS_COMMIT']}: "
    f"`DURATION={os.environ['DURATION']} VUS={os.environ['VUS']} KEYS={os.environ['KEYS']} bench/reshard.sh`.", "",
    f"- Machine: {os.environ['MACHINE']}; every process and the load tester share it, on loopback.",
    "- Release `trellis dev --groups 3 --replicas 2`, SYNC commits, filled by w1-rmw; "
    "then `trellis dev add-group` (group 4) and `trellis admin rebalance --wait` while "
    "w1-rmw runs again. Both w1-rmw runs are the same: "
    f"{os.environ['VUS']} VUs, {os.environ['DURATION']}, {os.environ['KEYS']} keys.", "",
    "| | value |", "|---|---:|",
    f"| slots moved | {job['slots_done']} in {job['batches_total']} batches |",
    f"| keys / bytes copied | {job['keys_copied']:,} / {job['bytes_copied']:,} |",
    f"| rebalance took | {os.environ['REBALANCE_S']} s |",
    f"| pause per batch (freeze to flip), p50 | {ms(quantile(0.5))} |",
    f"| pause per batch, p99 | {ms(quantile(0.99))} |",
    f"| pause per batch, max | {job['pause_max_ms']} ms |", "",
    "| w1-rmw | baseline | during the rebalance | ratio |", "|---|---:|---:|---:|",
    f"| throughput (it/s) | {base['rate']:,.0f} | {moving['rate']:,.0f} | {moving['rate'] / base['rate']:.2f}× |",
    f"| p50 (ms) | {base['p50']:.2f} | {moving['p50']:.2f} | {moving['p50'] / base['p50']:.2f}× |",
    f"| p99 (ms) | {base['p99']:.2f} | {moving['p99']:.2f} | {moving['p99'] / base['p99']:.2f}× |",
    f"| failed | {base['failed']:.2%} | {moving['failed']:.2%} | |", "",
    "The pause quantiles are the upper bounds of the histogram buckets they fall in "
    "(`trellis_reshard_pause_seconds`). The moving run's figures include the seconds "
    "before and after the rebalance within the same run, and its cluster has one more "
    "group (two more processes) on the same cores as the baseline's.", "",
    os.environ["END_MARK"]]
doc = os.environ["DOC"]
text = open(doc).read()
begin, end = os.environ["BEGIN_MARK"], os.environ["END_MARK"]
section = "\n".join(lines)
if begin in text and end in text:
    text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(doc, "w").write(text)
print(section)
PY
