#!/usr/bin/env bash
# Online resharding under load, measured in one run on this machine:
#   1. a release `trellis dev --groups 3 --replicas 2` (SYNC) is filled by
#      w1-rmw over $KEYS keys;
#   2. before: w1-rmw and w2-transfer at $VUS VUs for $DURATION each,
#      nothing moving, 3 groups;
#   3. `trellis dev add-group` adds group 4, and w1-rmw runs again while
#      `trellis admin rebalance --wait` moves its share to it (during);
#   4. after: w1-rmw and w2-transfer again, nothing moving, 4 groups;
#   5. `trellis admin drain-group --group 4 --wait` (no load), then
#      w2-transfer while a second rebalance moves group 4's share back
#      (during, for w2-transfer).
# It reports, as ratios to the before runs: throughput, p50, p99 and
# failures during and after; the server CPU per transaction (user+system
# time of the whole `trellis dev` process tree over a run, divided by its
# transactions) with 3 and with 4 groups; the per-batch pause (freeze to
# flip, from the coordinator's `trellis_reshard_pause_seconds` histogram
# and the jobs' longest); what the first rebalance copied and how fast,
# against the disk's raw sequential write rate (dd with fsync, same
# filesystem) — into docs/benchmarks.md, replacing its section. Nothing
# is asserted.
#
# Stops exactly what it started, by PID, on any exit (trap EXIT).
#
#   bench/reshard.sh                          # DURATION=20s VUS=64 KEYS=100000
#   TRELLIS_BIN=target/release/trellis bench/reshard.sh   # skip the build
#
# Needs: cargo (builds the release binary), python3 for the table, dd.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
VUS=${VUS:-64}
KEYS=${KEYS:-100000}
FILL=${FILL:-20s}
# How long a server may take to come up.
READY_SECONDS=60
DOC=docs/benchmarks.md
BEGIN_MARK='<!-- bench/reshard.sh: begin (generated; edit the script, not this section) -->'
END_MARK='<!-- bench/reshard.sh: end -->'

WORK=$(mktemp -d /tmp/trellis-reshard-bench.XXXXXX)
# log, PIDS (stopped on exit), stop_pid, free_port, TRELLIS.
source bench/lib.sh

PORT=$(free_port)
ADDR="127.0.0.1:$PORT"
log "trellis dev --groups 3 --replicas 2 on $ADDR"
# The driver logs each handed-over batch with where its pause went
# ("batch handed over": freeze, saves, drain, flip, between); kept in
# dev.log for the per-step table.
TRELLIS_LOG=${TRELLIS_LOG:-warn,trellis_coordinator::reshard_driver=info} \
"$TRELLIS" dev --insecure --data-dir "$WORK/data" --listen "$ADDR" --groups 3 --replicas 2 \
    >"$WORK/dev.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 $((READY_SECONDS * 10))); do
    grep -q '^READY ' "$WORK/dev.log" && break
    sleep 0.1
done
grep -q '^READY ' "$WORK/dev.log" || { cat "$WORK/dev.log" >&2; exit 1; }

DEV_PID=${PIDS[0]}

load() { # name workload duration
    local before after
    before=$(tree_cpu_ticks "$DEV_PID")
    "$TRELLIS" load --quiet --addr "$ADDR" --workload "$2" --keys "$KEYS" \
        --vus "$VUS" --duration "$3" --key-prefix "reshard-bench-$2" \
        --summary-export "$WORK/$1.json" >"$WORK/$1.txt"
    after=$(tree_cpu_ticks "$DEV_PID")
    echo $((after - before)) >"$WORK/$1.cpu"
}

# A load in the background while an admin command runs: name workload args...
load_during() {
    local name=$1 workload=$2
    shift 2
    load "$name" "$workload" "$DURATION" &
    local pid=$!
    PIDS+=("$pid")
    sleep 2
    local start end
    start=$(date +%s.%N)
    "$TRELLIS" admin "$@" --wait --addr "$ADDR" >"$WORK/$name.admin.txt"
    end=$(date +%s.%N)
    wait "$pid"
    python3 -c "print(round($end - $start, 2))" >"$WORK/$name.took"
    tail -1 "$WORK/$name.admin.txt" >&2
}

log "filling $KEYS keys of each workload (w1-rmw and w2-transfer for $FILL each)"
load fill-w1 w1-rmw "$FILL"
load fill-w2 w2-transfer "$FILL"
for w in w1-rmw w2-transfer; do
    log "before: $w, $VUS VUs, $DURATION, 3 groups, nothing moving"
    load "before-$w" "$w" "$DURATION"
done

cat /proc/loadavg >"$WORK/loadavg-before.txt"
log "adding group 4"
"$TRELLIS" dev add-group --data-dir "$WORK/data" >&2
log "w1-rmw while group 4 takes its share (trellis admin rebalance --wait)"
load_during during-w1-rmw w1-rmw rebalance
"$TRELLIS" admin reshard list --format json --addr "$ADDR" >"$WORK/jobs-first.json"

for w in w1-rmw w2-transfer; do
    log "after: $w, 4 groups, nothing moving"
    load "after-$w" "$w" "$DURATION"
done

log "draining group 4 (no load), then w2-transfer while a rebalance fills it again"
"$TRELLIS" admin drain-group --group 4 --wait --addr "$ADDR" >"$WORK/drain.txt"
load_during during-w2-transfer w2-transfer rebalance
"$TRELLIS" admin reshard list --format json --addr "$ADDR" >"$WORK/jobs.json"
METRICS=$(python3 -c '
import json, sys
for t in json.load(open(sys.argv[1])):
    if t["labels"]["job"] == "trellis-coordinator":
        print(t["targets"][0])' "$WORK/data/prometheus-targets.json")
curl -s "http://$METRICS/metrics" >"$WORK/metrics.txt"
cat /proc/loadavg >"$WORK/loadavg-after.txt"

log "the disk's raw sequential write rate (dd, 256 MiB, fsync)"
dd if=/dev/zero of="$WORK/dd.bin" bs=1M count=256 conv=fsync 2>"$WORK/dd.txt"
rm -f "$WORK/dd.bin"
export CLK_TCK=$(getconf CLK_TCK)

log "writing $DOC"
export WORK DURATION VUS KEYS DOC BEGIN_MARK END_MARK
export MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
export TRELLIS_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
python3 - <<'PY'
import json, os, datetime, re, math
work = os.environ["WORK"]
tck = int(os.environ["CLK_TCK"])

def result(name):
    m = json.load(open(f"{work}/{name}.json"))["metrics"]
    cpu_s = int(open(f"{work}/{name}.cpu").read()) / tck
    txns = m["iterations"]["values"]["count"]
    return {
        "rate": m["iterations"]["values"]["rate"],
        "p50": m["txn_duration"]["values"]["med"],
        "p99": m["txn_duration"]["values"]["p(99)"],
        "failed": m["txn_failed"]["values"]["rate"],
        "cpu_ms": 1000 * cpu_s / txns if txns else float("nan"),
    }

def jobs_of(path):
    jobs = json.load(open(path))
    return jobs if isinstance(jobs, list) else jobs.get("jobs", [])
first_jobs = jobs_of(f"{work}/jobs-first.json")
first = max(first_jobs, key=lambda j: j["id"])
all_jobs = jobs_of(f"{work}/jobs.json")
last = max(all_jobs, key=lambda j: j["id"])
took = float(open(f"{work}/during-w1-rmw.took").read())
copy_mb_s = first["bytes_copied"] / took / 1e6 if took else float("nan")
dd = open(f"{work}/dd.txt").read()
m = re.search(r"([0-9.,]+) ([kMG]?B)/s", dd)
scale = {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}
disk_mb_s = float(m.group(1).replace(",", ".")) * scale[m.group(2)] if m else float("nan")

# The pause histogram (both rebalances and the drain): quantiles as the
# upper bound of the bucket reached.
buckets, count = [], 0
for line in open(f"{work}/metrics.txt"):
    mm = re.match(r'trellis_reshard_pause_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if mm:
        buckets.append((float(mm.group(1)), float(mm.group(2))))
    mm = re.match(r"trellis_reshard_pause_seconds_count (\S+)", line)
    if mm:
        count = float(mm.group(1))
def quantile(q):
    for le, c in buckets:
        if c >= q * count:
            return le
    return float("inf")
def ms(seconds):
    return "≤ %g ms" % (seconds * 1000)
pause_max = max(j["pause_max_ms"] for j in all_jobs)

# Every handed-over batch as the driver logged it, by job (the first
# rebalance under w1-rmw, the drain with no load, the second rebalance
# under w2-transfer), with where its pause went.
handed = {}
for line in open(f"{work}/dev.log", errors="replace"):
    if "batch handed over" in line:
        f = {k: int(v) for k, v in re.findall(r"\b(\w+)=(\d+)\b", line)}
        if "job" in f and "pause_ms" in f:
            handed.setdefault(f["job"], []).append(f)
def exact(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(len(v) * q) - 1))] if v else float("nan")
STEPS = [("pause_ms", "pause (freeze to flip)"), ("freeze_ms", "freeze call"),
         ("saves_ms", "job saves while frozen"), ("drain_ms", "drained copy, every try"),
         ("flip_ms", "flip (map CAS, tell both groups)"), ("between_ms", "between steps (ticks, backoffs)")]
def step_rows():
    names = {first["id"]: "first rebalance (w1-rmw)", last["id"]: "second rebalance (w2-transfer)"}
    out = ["| job | batches | step | p50 (ms) | p99 (ms) | max (ms) |", "|---|---:|---|---:|---:|---:|"]
    for job in sorted(handed):
        batches = handed[job]
        name = names.get(job, "drain of group 4 (no load)")
        for key, label in STEPS:
            vals = [b.get(key, 0) for b in batches]
            out.append(f"| {name} | {len(batches)} | {label} | {exact(vals, 0.5)} | {exact(vals, 0.99)} | {max(vals)} |")
        tries = [b.get("drain_tries", 0) for b in batches]
        fails = sum(b.get("failures", 0) for b in batches)
        out.append(f"| {name} | {len(batches)} | drained-copy tries (NOT_DRAINED retries + 1); failed steps | {exact(tries, 0.5)} | {exact(tries, 0.99)} | {max(tries)}; {fails} failed |")
    return out
all_pauses = [b["pause_ms"] for bs in handed.values() for b in bs]
loadavg = " → ".join(open(f"{work}/loadavg-{w}.txt").read().split()[0] for w in ("before", "after"))

def rows(w, during_name):
    b, d, a = result(f"before-{w}"), result(during_name), result(f"after-{w}")
    out = [f"| {w} | before (3 groups) | during the rebalance | after (4 groups) | during / before | after / before |",
           "|---|---:|---:|---:|---:|---:|"]
    out.append(f"| throughput (it/s) | {b['rate']:,.0f} | {d['rate']:,.0f} | {a['rate']:,.0f} | {d['rate'] / b['rate']:.2f}× | {a['rate'] / b['rate']:.2f}× |")
    out.append(f"| p50 (ms) | {b['p50']:.2f} | {d['p50']:.2f} | {a['p50']:.2f} | {d['p50'] / b['p50']:.2f}× | {a['p50'] / b['p50']:.2f}× |")
    out.append(f"| p99 (ms) | {b['p99']:.2f} | {d['p99']:.2f} | {a['p99']:.2f} | {d['p99'] / b['p99']:.2f}× | {a['p99'] / b['p99']:.2f}× |")
    out.append(f"| failed | {b['failed']:.2%} | {d['failed']:.2%} | {a['failed']:.2%} | | |")
    out.append(f"| server CPU per transaction (ms) | {b['cpu_ms']:.3f} | {d['cpu_ms']:.3f} | {a['cpu_ms']:.3f} | {d['cpu_ms'] / b['cpu_ms']:.2f}× | {a['cpu_ms'] / b['cpu_ms']:.2f}× |")
    return out

lines = [os.environ["BEGIN_MARK"], "",
    "## Online resharding under load (`bench/reshard.sh`)", "",
    f"Run of {datetime.date.today().isoformat()}, commit {os.environ['TRELLIS_COMMIT']}: "
    f"`DURATION={os.environ['DURATION']} VUS={os.environ['VUS']} KEYS={os.environ['KEYS']} bench/reshard.sh`.", "",
    f"- Machine: {os.environ['MACHINE']}; every process and the load tester share it, on loopback.",
    "- Release `trellis dev --groups 3 --replicas 2`, SYNC commits, filled by w1-rmw and w2-transfer. "
    "Before: each workload alone, 3 groups. Then `trellis dev add-group` (group 4) and "
    "`trellis admin rebalance --wait` while w1-rmw runs; after: each workload alone, 4 groups; "
    "then `trellis admin drain-group --group 4 --wait` with no load, and a second rebalance "
    "while w2-transfer runs. "
    f"Every run: {os.environ['VUS']} VUs, {os.environ['DURATION']}, {os.environ['KEYS']} keys.",
    "- Server CPU per transaction: user+system time of the whole `trellis dev` process tree "
    "(coordinator, every replica) over the run, divided by the run's transactions.", "",
    "| first rebalance (onto group 4, under w1-rmw) | value |", "|---|---:|",
    f"| slots moved | {first['slots_done']} in {first['batches_total']} batches |",
    f"| keys / bytes copied | {first['keys_copied']:,} / {first['bytes_copied']:,} |",
    f"| took | {took} s |",
    f"| copy rate | {copy_mb_s:.2f} MB/s |",
    f"| disk's raw sequential write rate (dd, fsync) | {disk_mb_s:,.0f} MB/s |",
    f"| copy rate / disk rate | {copy_mb_s / disk_mb_s:.4f} |", "",
    f"| pause per batch (freeze to flip), {int(count)} batches of every job | value |", "|---|---:|",
    f"| p50 | {ms(quantile(0.5))} (exact, from the driver's log: {exact(all_pauses, 0.5)} ms) |",
    f"| p99 | {ms(quantile(0.99))} (exact: {exact(all_pauses, 0.99)} ms) |",
    f"| max | {pause_max} ms |",
    f"| load average (1 min) at the first rebalance → at the end | {loadavg} |", "",
    "Where each batch's pause went (the driver's `batch handed over` log lines; "
    "`trellis_reshard_cutover_step_seconds` has the same by step):", "",
    *step_rows(), "",
    *rows("w1-rmw", "during-w1-rmw"), "",
    *rows("w2-transfer", "during-w2-transfer"), "",
    "The pause quantiles are the upper bounds of the histogram buckets they fall in "
    "(`trellis_reshard_pause_seconds`). A during run's figures include the seconds before "
    "and after its rebalance within the same run. The copy rate is the first rebalance's "
    "bytes over its whole time, batches' freezes and catalog writes included: with a few MB "
    "to move it measures the per-batch steps, not the disk. Failed transactions in "
    "w2-transfer during a move would include any two-phase commit that met a moved slot "
    "and was not retried; `trellis load` retries `SLOTS_MOVED` and `RESOLVED_ABORT` (a drain settled it first) as conflicts.", "",
    os.environ["END_MARK"]]
section = "\n".join(lines)
import sys; sys.path.insert(0, "bench"); from doc_section import write_section
write_section(section)
print(section)
PY
