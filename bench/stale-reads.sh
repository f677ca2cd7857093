#!/usr/bin/env bash
# Reads on backups (issue 21), measured in one run on this machine: w3-read
# (one single-key read per iteration) as STRONG and as STALE($BOUND) against
# `trellis dev --groups $GROUP_COUNT --replicas R` for R in $REPLICAS (3
# groups; 1, 2 and 3 replicas by default). For each R:
#   1. a fresh dev cluster on free loopback ports, data under one temporary
#      directory; the script waits until every group has its primary and
#      R - 1 in-sync backups (`trellis status --format json`);
#   2. the $KEYS keys w3-read reads are written ($VALUE_SIZE-byte values,
#      `UPSERT`s of $PRELOAD_BATCH rows through `trellis sql`), so that
#      every read finds a value;
#   3. `trellis load --workload w3-read --consistency strong`, then
#      `--consistency stale:$BOUND`, $VUS VUs for $DURATION each, the
#      client routing itself (`--route direct`: a STALE read goes to an
#      in-sync member of its group drawn at random, the primary included).
# Around each run it reads every shard's /metrics and the CPU ticks of
# every shard process (PIDs, roles and metrics addresses from `trellis
# status --format json`), and the load tester's own CPU, and reports:
# throughput, p50/p99; the share of read requests the primaries served
# (`trellis_reads_total` by role); the share of the shards' CPU the
# primaries used; shard and load-tester CPU per read; the staleness of the
# STALE reads backups served, p50/p99 at the resolution of the
# `trellis_stale_read_staleness_seconds` buckets, and its mean; the
# fallback rate (`trellis_stale_read_declines_total` / (STALE reads
# backups served + declines): the share of reads sent to a backup that
# went on to the primary); and the CPU anything else on the machine used
# meanwhile (/proc/stat less the cluster and the load tester), to tell a
# disturbed run. It writes the table into docs/benchmarks.md,
# replacing its section. Nothing is asserted; a run in which a member's
# role or pid changed is marked in the table.
#
# Every process shares this machine's cores: backups serving reads cannot
# add CPU here, so the run shows how reads and CPU spread over replicas and
# what staleness and fallbacks cost, not scale-out across machines.
#
# Stops exactly what it started, by PID, on any exit (bench/lib.sh).
#
#   bench/stale-reads.sh                        # DURATION=10s VUS=64 BOUND=500ms REPLICAS="1 2 3"
#   DURATION=3s bench/stale-reads.sh            # a quick look
#   TRELLIS_BIN=path/to/trellis bench/stale-reads.sh   # skip the release build
#   TRELLIS_BIN=... TRELLIS_COMMIT=abc1234 bench/stale-reads.sh  # a binary of another commit
#   REPLICAS=3 BOUND=200ms bench/stale-reads.sh # one cluster, another bound
#   GROUP_COUNT=9 REPLICAS=1 bench/stale-reads.sh   # 9 primaries: as many shard
#                                               # processes as 3 groups of 3
#   KEEP_WORK=1 bench/stale-reads.sh            # keep logs, metrics and summaries
#
# Needs: cargo (builds the release binary), curl, python3 for the figures
# and the table.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
VUS=${VUS:-64}
# The staleness bound of the STALE runs (trellis load's stale:DURATION).
BOUND=${BOUND:-500ms}
# Replicas per group, one cluster each, in this order.
REPLICAS=${REPLICAS:-"1 2 3"}
# Shard groups of every cluster.
GROUP_COUNT=${GROUP_COUNT:-3}
# Keys w3-read spreads over (trellis load's default) and their values'
# size (trellis load's default for the values it writes).
KEYS=${KEYS:-100000}
VALUE_SIZE=100
# Rows per preload UPSERT: one transaction may write at most 1,024 keys
# (TXN_KEYS_MAX).
PRELOAD_BATCH=1000
# gRPC channels of the load tester (its default).
GRPC_CONNECTIONS=${GRPC_CONNECTIONS:-4}
# Key prefix of the preload and of every run.
KEY_PREFIX=stale-bench
# How long a cluster may take to come up, and then to have every backup
# in sync.
READY_SECONDS=60
IN_SYNC_SECONDS=60
# Deadline of one /metrics scrape.
SCRAPE_SECONDS=5
# The issue's goal: with 3 replicas, primaries serve at most this share
# (percent) of STALE reads.
PRIMARY_SHARE_GOAL=40
DOC=docs/benchmarks.md
BEGIN_MARK='<!-- bench/stale-reads.sh: begin (generated; edit the script, not this section) -->'
END_MARK='<!-- bench/stale-reads.sh: end -->'

WORK=$(mktemp -d /tmp/trellis-stale-reads.XXXXXX)
# log, PIDS (stopped newest first on exit), stop_pid, free_port,
# tree_cpu_ticks, TRELLIS (the release binary, built unless TRELLIS_BIN).
source bench/lib.sh

command -v curl >/dev/null || { echo "error: curl is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is needed" >&2; exit 1; }

# The members of every group from `trellis status --format json` on stdin,
# one line each: group address role pid metrics_addr in_sync alive keys.
members_of() {
    python3 -c '
import json, sys
for g in json.load(sys.stdin)["groups"]:
    for m in g["members"]:
        print(g["group"], m["address"], m["role"], m["pid"], m["metrics_addr"] or "-",
              str(m["in_sync"]).lower(), str(m["alive"]).lower(), m["keys"] if m["keys"] is not None else 0)'
}

# Waits until every group has one live primary and replicas - 1 live
# in-sync backups; leaves the members in FILE.
wait_in_sync() { # addr replicas file
    local addr=$1 replicas=$2 file=$3
    for _ in $(seq 1 $((IN_SYNC_SECONDS * 2))); do
        if "$TRELLIS" status --addr "$addr" --format json 2>/dev/null | members_of >"$file.tmp" 2>/dev/null &&
            python3 - "$file.tmp" "$replicas" "$GROUP_COUNT" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
replicas, groups = int(sys.argv[2]), int(sys.argv[3])
ok = {}
for g, _addr, role, _pid, _metrics, in_sync, alive, _keys in rows:
    if alive == "true" and (role == "primary" or (role == "backup" and in_sync == "true")):
        ok.setdefault(g, []).append(role)
good = len(ok) == groups and all(
    len(r) == replicas and r.count("primary") == 1 for r in ok.values())
sys.exit(0 if good else 1)
PY
        then
            mv "$file.tmp" "$file"
            return 0
        fi
        sleep 0.5
    done
    echo "error: not every group had a primary and $((replicas - 1)) in-sync backup(s) within ${IN_SYNC_SECONDS}s:" >&2
    cat "$file.tmp" >&2
    return 1
}

# Every member's /metrics and CPU ticks: PREFIX.N.prom, PREFIX.N.ticks for
# the N-th line of the members file.
snapshot() { # members-file prefix
    local n=0 group addr pid metrics
    while read -r group addr _ pid metrics _; do
        n=$((n + 1))
        curl -sf --max-time "$SCRAPE_SECONDS" "http://$metrics/metrics" >"$2.$n.prom" ||
            { echo "error: cannot scrape $metrics (group $group, $addr)" >&2; return 1; }
        tree_cpu_ticks "$pid" >"$2.$n.ticks"
    done <"$1"
}

for replicas in $REPLICAS; do
    dir="$WORK/r$replicas"
    mkdir -p "$dir"
    port=$(free_port)
    addr="127.0.0.1:$port"
    log "trellis dev --groups $GROUP_COUNT --replicas $replicas on $addr"
    "$TRELLIS" dev --insecure --data-dir "$dir/data" --listen "$addr" --groups "$GROUP_COUNT" \
        --replicas "$replicas" >"$dir/dev.log" 2>&1 &
    dev_pid=$!
    PIDS+=("$dev_pid")
    for _ in $(seq 1 $((READY_SECONDS * 10))); do
        grep -q '^READY ' "$dir/dev.log" && break
        sleep 0.1
    done
    grep -q '^READY ' "$dir/dev.log" || { cat "$dir/dev.log" >&2; exit 1; }
    wait_in_sync "$addr" "$replicas" "$dir/members-start"

    log "writing $KEYS keys of $VALUE_SIZE bytes ($KEY_PREFIX:...) in UPSERTs of $PRELOAD_BATCH"
    python3 - "$KEY_PREFIX" "$KEYS" "$VALUE_SIZE" "$PRELOAD_BATCH" >"$dir/preload.sql" <<'PY'
import sys
prefix, keys, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for start in range(0, keys, batch):
    rows = []
    for i in range(start, min(start + batch, keys)):
        value = f"value-{i}-".ljust(size, "x")[:size]
        rows.append(f"('{prefix}:{i:010d}','{value}')")
    print("UPSERT INTO kv VALUES " + ", ".join(rows) + ";")
PY
    "$TRELLIS" sql --addr "$addr" -f "$dir/preload.sql" >"$dir/preload.out" 2>"$dir/preload.err" ||
        { cat "$dir/preload.err" >&2; exit 1; }
    rm -f "$dir/preload.sql"
    wait_in_sync "$addr" "$replicas" "$dir/members-preloaded"
    log "keys on the primaries: $(awk '$3 == "primary" {n += $8} END {print n}' "$dir/members-preloaded")"

    for consistency in strong "stale:$BOUND"; do
        name=${consistency%%:*}
        out="$dir/$name"
        # Members, roles and pids as of just before the run (a backup
        # catching up after the preload may leave and rejoin).
        wait_in_sync "$addr" "$replicas" "$out.members-before"
        log "w3-read $consistency, $replicas replica(s): $VUS VUs for $DURATION"
        cut -d' ' -f1 /proc/loadavg >"$out.load"
        snapshot "$out.members-before" "$out.before"
        # The whole machine's CPU counters and the cluster's whole tree:
        # what else ran meanwhile is the difference.
        sed -n 1p /proc/stat >"$out.before.stat"
        tree_cpu_ticks "$dev_pid" >"$out.before.dev"
        if ! client_cpu "$out.client" "$TRELLIS" load --quiet --addr "$addr" --workload w3-read \
            --consistency "$consistency" --keys "$KEYS" --key-prefix "$KEY_PREFIX" \
            --vus "$VUS" --duration "$DURATION" --connections "$GRPC_CONNECTIONS" \
            --summary-export "$out.json" >"$out.txt" 2>"$out.err"; then
            log "w3-read $consistency with $replicas replica(s) failed: $(tail -1 "$out.err")"
        fi
        sed -n 1p /proc/stat >"$out.after.stat"
        tree_cpu_ticks "$dev_pid" >"$out.after.dev"
        snapshot "$out.members-before" "$out.after"
        "$TRELLIS" status --addr "$addr" --format json | members_of >"$out.members-after" || true
        grep -E 'txn_duration\.|iterations\.|txn_failed' "$out.txt" >&2 || true
    done

    log "stopping the cluster of $replicas replica(s)"
    stop_pid "$dev_pid"
    # Stopped: not to be signalled again on exit (its PID may be reused).
    kept=()
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$dev_pid" ]] || kept+=("$pid")
    done
    PIDS=(${kept[@]+"${kept[@]}"})
done

log "writing $DOC"
export WORK DURATION VUS BOUND REPLICAS GROUP_COUNT KEYS VALUE_SIZE GRPC_CONNECTIONS \
    PRIMARY_SHARE_GOAL DOC BEGIN_MARK END_MARK
CLK_TCK=$(getconf CLK_TCK)
MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
# The commit the binary was built from (TRELLIS_COMMIT=... when
# TRELLIS_BIN comes from another checkout), else this checkout's.
TRELLIS_COMMIT=${TRELLIS_COMMIT:-"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+dirty')"}
export CLK_TCK MACHINE TRELLIS_COMMIT
python3 - <<'PY'
import datetime, json, math, os, re
work = os.environ["WORK"]
tck = int(os.environ["CLK_TCK"])
replica_counts = [int(r) for r in os.environ["REPLICAS"].split()]
bound = os.environ["BOUND"]
goal = float(os.environ["PRIMARY_SHARE_GOAL"])
RUNS = [("strong", "STRONG"), ("stale", f"STALE({bound})")]
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)')
LABEL = re.compile(r'(\w+)="([^"]*)"')

def scrape(path):
    """{(name, frozenset(labels)): value} of one /metrics text."""
    out = {}
    for line in open(path):
        m = SAMPLE.match(line)
        if m:
            labels = frozenset(LABEL.findall(m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out

def members(path):
    rows = []
    for line in open(path):
        group, addr, role, pid, metrics, in_sync, alive, keys = line.split()
        rows.append({"group": int(group), "address": addr, "role": role, "pid": int(pid)})
    return rows

def reads(m, consistency, role):
    return m.get(("trellis_reads_total", frozenset({("consistency", consistency), ("role", role)})), 0.0)

def bucket_quantile(buckets, count, q):
    """(lower, upper, linear estimate) of the bucket holding quantile q;
    buckets are cumulative (upper bound, count) in order."""
    if count <= 0:
        return None
    rank, lower, below = q * count, 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if math.isinf(le):
                return (lower, le, lower)
            inside = cum - below
            est = lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            return (lower, le, est)
        lower, below = le, cum
    return None

def result(replicas, name):
    base = f"{work}/r{replicas}/{name}"
    try:
        summary = json.load(open(base + ".json"))["metrics"]
    except (OSError, ValueError):
        return None
    before_m = members(base + ".members-before")
    after_m = members(base + ".members-after") if os.path.exists(base + ".members-after") else []
    key = lambda ms: sorted((m["address"], m["role"], m["pid"]) for m in ms)
    roles_changed = key(before_m) != key(after_m)
    per = []
    stale_buckets, stale_sum, stale_count = {}, 0.0, 0.0
    for n, mem in enumerate(before_m, start=1):
        b, a = scrape(f"{base}.before.{n}.prom"), scrape(f"{base}.after.{n}.prom")
        d = lambda *k: (a.get(k, 0.0) - b.get(k, 0.0))
        ticks = int(open(f"{base}.after.{n}.ticks").read()) - int(open(f"{base}.before.{n}.ticks").read())
        row = dict(mem)
        row["strong"] = reads(a, "strong", "primary") - reads(b, "strong", "primary")
        row["stale_primary"] = reads(a, "stale", "primary") - reads(b, "stale", "primary")
        row["stale_backup"] = reads(a, "stale", "backup") - reads(b, "stale", "backup")
        row["declines"] = d("trellis_stale_read_declines_total", frozenset())
        row["cpu_s"] = ticks / tck
        per.append(row)
        for (metric, labels), value in a.items():
            if metric == "trellis_stale_read_staleness_seconds_bucket":
                le = float(dict(labels)["le"])
                stale_buckets[le] = stale_buckets.get(le, 0.0) + value - b.get((metric, labels), 0.0)
        stale_sum += d("trellis_stale_read_staleness_seconds_sum", frozenset())
        stale_count += d("trellis_stale_read_staleness_seconds_count", frozenset())
    values = summary
    iterations = values["iterations"]["values"]["count"]
    failed = values["txn_failed"]["values"]["passes"]
    served = sum(r["strong"] + r["stale_primary"] + r["stale_backup"] for r in per)
    on_primaries = sum(r["strong"] + r["stale_primary"] for r in per)
    backup_stale = sum(r["stale_backup"] for r in per)
    declines = sum(r["declines"] for r in per)
    cpu_all = sum(r["cpu_s"] for r in per)
    cpu_primaries = sum(r["cpu_s"] for r in per if r["role"] == "primary")
    buckets = sorted(stale_buckets.items())
    client_s = float(open(base + ".client").read())
    # /proc/stat's first line: user nice system idle iowait irq softirq
    # steal ...; busy is all but idle and iowait.
    stat = lambda p: [int(f) for f in open(p).read().split()[1:9]]
    sb, sa = stat(base + ".before.stat"), stat(base + ".after.stat")
    delta = [x - y for x, y in zip(sa, sb)]
    busy_ticks = sum(delta) - delta[3] - delta[4]
    elapsed_s = sum(delta) / tck / (os.cpu_count() or 1)
    dev_ticks = int(open(base + ".after.dev").read()) - int(open(base + ".before.dev").read())
    others_s = max(0.0, busy_ticks / tck - dev_ticks / tck - client_s)
    return {
        "rate": values["iterations"]["values"]["rate"],
        "p50": values["txn_duration"]["values"]["med"],
        "p99": values["txn_duration"]["values"]["p(99)"],
        "failed": failed / iterations if iterations else 0.0,
        "iterations": iterations,
        "served": served,
        "primary_share": on_primaries / served if served else float("nan"),
        "cpu_share": cpu_primaries / cpu_all if cpu_all else float("nan"),
        "shard_us": 1e6 * cpu_all / iterations if iterations else float("nan"),
        "client_us": 1e6 * client_s / iterations if iterations else float("nan"),
        "st50": bucket_quantile(buckets, stale_count, 0.5),
        "st99": bucket_quantile(buckets, stale_count, 0.99),
        "st_mean": stale_sum / stale_count if stale_count else None,
        "backup_stale": backup_stale,
        "declines": declines,
        "fallback": declines / (backup_stale + declines) if backup_stale + declines else None,
        "load": open(base + ".load").read().strip(),
        "others": others_s / elapsed_s if elapsed_s else float("nan"),
        "roles_changed": roles_changed,
        "per": per,
    }

res = {(r, n): result(r, n) for r in replica_counts for n, _ in RUNS}

def ms(x):
    return f"{x * 1000:.0f}" if not math.isinf(x) else "∞"
def quantile_cell(q):
    if q is None:
        return "—"
    lo, hi, est = q
    return f"≈{ms(est)} ({ms(lo)}–{ms(hi)})"
def pct(x):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.1f}%"

cores = os.cpu_count() or 1
loads = [float(r["load"]) for r in res.values() if r]
lines = [os.environ["BEGIN_MARK"], "",
    "## Reads on backups: w3-read STRONG vs STALE (`bench/stale-reads.sh`)", "",
    f"Run of {datetime.date.today().isoformat()}, commit {os.environ['TRELLIS_COMMIT']}: "
    f"`DURATION={os.environ['DURATION']} VUS={os.environ['VUS']} BOUND={bound} "
    f"REPLICAS=\"{os.environ['REPLICAS']}\""
    f"{'' if os.environ['GROUP_COUNT'] == '3' else ' GROUP_COUNT=' + os.environ['GROUP_COUNT']}"
    " bench/stale-reads.sh`.", "",
    f"- Machine: {os.environ['MACHINE']}; every replica of every group, the coordinator and the "
    "load tester share it, on loopback. `load` is the 1-minute load average when the run started.",
    f"- For each replica count a fresh release `trellis dev --groups {os.environ['GROUP_COUNT']} "
    f"--replicas R` (SYNC), its {int(os.environ['KEYS']):,} keys written first "
    f"({os.environ['VALUE_SIZE']}-byte values), then `trellis load --workload w3-read` "
    f"(one single-key read per iteration, uniform keys) with `--consistency strong`, then "
    f"`stale:{bound}`: {os.environ['VUS']} VUs, {os.environ['DURATION']} each, "
    f"{os.environ['GRPC_CONNECTIONS']} gRPC channels, the client routing itself (`--route direct`: "
    "STRONG reads to the primary; a STALE read to an in-sync member drawn at random, the "
    "primary included).",
    "- *on primaries*: the share of the read requests the shards served (`trellis_reads_total`, "
    "summed over every shard) that primaries served; a STALE read a backup declined is served "
    "by the primary and counts there. *primaries' CPU*: the primaries' share of the user+system "
    "CPU time of all shard processes over the run (/proc). *shard / client CPU*: every shard's CPU, "
    "and the load tester's own, per read.",
    "- *staleness*: of the STALE reads backups served (`trellis_stale_read_staleness_seconds`, "
    "bucket counts over the run): the quantile's estimate by linear interpolation within its "
    "bucket, and the bucket's bounds in ms — the histogram's bounds near here are 50, 100, 250, "
    "500 ms, so this is bucket resolution, not a measurement to the millisecond; *mean* is exact "
    "(sum / count). A backup's staleness is proven, not observed: the age of the newest safe "
    "point its applied log covers, so it is an upper bound on how old the value was.",
    "- *fallback*: STALE reads backups declined (`trellis_stale_read_declines_total`) over those "
    "sent to backups (served + declined); each went on to the primary.",
    "- *others' CPU*: the machine's busy CPU time over the run (/proc/stat) less the cluster's "
    "(`trellis dev`'s whole tree) and the load tester's, in cores: what else ran meanwhile "
    f"(of {os.cpu_count()}). A run with much of it is not comparable with the others.",
    ]
if loads and max(loads) > cores:
    lines.append(f"- **The machine was busy**: the load average reached {max(loads):.1f} on {cores} "
                 "cores during the runs (the benchmark's own processes count).")
if any(r and r["roles_changed"] for r in res.values()):
    lines.append("- ⚠ marks a run during which a member's role or pid changed (a failover or a "
                 "restart): its shares are not of a steady cluster.")
lines += ["",
    "| replicas | reads | it/s | p50 ms | p99 ms | failed | on primaries | primaries' CPU | "
    "shard CPU µs/read | client CPU µs/read | staleness p50 ms | staleness p99 ms | "
    "staleness mean ms | fallback | others' CPU | load |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in replica_counts:
    for name, label in RUNS:
        x = res[(r, name)]
        if x is None:
            lines.append(f"| {r} | {label} | — | — | — | — | — | — | — | — | — | — | — | — | — | "
                         "run failed (see the log) |")
            continue
        mark = " ⚠" if x["roles_changed"] else ""
        stale = name == "stale" and r > 1
        lines.append(
            f"| {r} | {label}{mark} | {x['rate']:,.0f} | {x['p50']:.2f} | {x['p99']:.2f} | "
            f"{x['failed'] * 100:.2f}% | {pct(x['primary_share'])} | {pct(x['cpu_share'])} | "
            f"{x['shard_us']:.1f} | {x['client_us']:.1f} | "
            f"{quantile_cell(x['st50']) if stale else '—'} | {quantile_cell(x['st99']) if stale else '—'} | "
            f"{ms(x['st_mean']) if stale and x['st_mean'] is not None else '—'} | "
            f"{pct(x['fallback']) if stale else '—'} | {x['others']:.2f} | {x['load']} |")

lines += ["", f"STALE({bound}) runs, group by group: the share of the group's read requests each "
    "member served (primary first) and its CPU seconds over the run.", "",
    "| replicas | group | reads: primary / backups | backups' declines | CPU s: primary / backups |",
    "|---:|---:|---|---:|---|"]
for r in replica_counts:
    x = res[(r, "stale")]
    if x is None:
        continue
    for g in sorted({m["group"] for m in x["per"]}):
        ms_ = sorted((m for m in x["per"] if m["group"] == g), key=lambda m: m["role"] != "primary")
        total = sum(m["strong"] + m["stale_primary"] + m["stale_backup"] for m in ms_)
        share = lambda m: (m["strong"] + m["stale_primary"] + m["stale_backup"]) / total if total else 0.0
        reads_cell = f"{share(ms_[0]) * 100:.0f}%"
        cpu_cell = f"{ms_[0]['cpu_s']:.1f}"
        if len(ms_) > 1:
            reads_cell += " / " + ", ".join(f"{share(m) * 100:.0f}%" for m in ms_[1:])
            cpu_cell += " / " + ", ".join(f"{m['cpu_s']:.1f}" for m in ms_[1:])
        lines.append(f"| {r} | {g} | {reads_cell} | {sum(m['declines'] for m in ms_):.0f} | {cpu_cell} |")

three = res.get((3, "stale"))
if three is not None:
    share = three["primary_share"] * 100
    lines += ["", f"Goal (issue 21): with 3 replicas, primaries serve at most {goal:.0f}% of STALE "
              f"reads. This run: {share:.1f}% — "
              f"{'met' if share <= goal else '**not met**'} (a uniform draw gives a third, plus "
              "the reads backups declined, which the primary then serves)."]
lines += ["", os.environ["END_MARK"]]
section = "\n".join(lines)
import sys; sys.path.insert(0, "bench"); from doc_section import write_section
write_section(section)
print(section)
PY
