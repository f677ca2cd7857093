#!/usr/bin/env bash
# Trellis against its peers, on this machine, in one run, each peer with its
# best client:
#   - PostgreSQL: a primary with one synchronous standby (own initdb'd
#     instances on free ports; the system server on 5432 is not touched),
#     driven twice: SERIALIZABLE transactions (`--pg-mode serializable`) and
#     version-conditional writes at READ COMMITTED (`--pg-mode occ`);
#   - Redis: a primary and one replica (own `redis-server`s on free ports,
#     `appendonly yes`, `appendfsync always`; the system Redis on 6379 is
#     not touched), WATCH/MULTI/EXEC and `WAIT 1`;
#   - etcd: a 3-member cluster (installed with apt-get if missing; if that
#     fails the table says so);
#   - `trellis dev --groups 3 --replicas 2`;
# all on loopback with their data under one temporary directory. Runs
# w1-rmw, w2-transfer and w3-read at $VUS VUs for $DURATION against each in
# turn with `trellis load`, measuring around each run the CPU of the
# system's whole server process tree (from /proc) and of the load tester,
# and writes the table (throughput, p50, p99, server and client CPU per
# transaction, Trellis/peer ratios against each peer's best figure) into
# docs/benchmarks.md, replacing its section.
#
# Stops exactly what it started, by PID, on any exit (bench/lib.sh).
#
#   bench/compare.sh                  # DURATION=30s VUS=64
#   DURATION=10s bench/compare.sh
#   TRELLIS_BIN=path/to/trellis bench/compare.sh   # skip the release build
#   ORDER=reverse bench/compare.sh    # each workload's targets in the opposite order
#   ROUTE=coordinator bench/compare.sh # Trellis with every call through the coordinator
#   WORKLOADS="w2-transfer w2-transfer:zipf=0.99" bench/compare.sh
#                                     # NAME:zipf=S: keys drawn Zipf(S) (hot keys), beside
#                                     # the uniform run of NAME for the skew table
#
# Needs: cargo (builds the release binary), redis-server, apt-get when etcd
# or PostgreSQL is missing (installs etcd-server etcd-client / postgresql),
# python3 for the CPU figures and the table. As root, PostgreSQL runs as the
# `postgres` user (initdb refuses root).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30s}
VUS=${VUS:-64}
WORKLOADS=${WORKLOADS:-"w1-rmw w2-transfer w3-read"}
# How the Trellis load reaches the shards: direct (the Rust client's
# default: reads and one-group commits straight to the primaries) or
# coordinator (every call through the coordinator).
ROUTE=${ROUTE:-direct}
# Connections of the load tester: gRPC channels for Trellis and etcd; one
# PostgreSQL session or Redis connection per VU (each runs one transaction
# at a time).
GRPC_CONNECTIONS=${GRPC_CONNECTIONS:-4}
# How long a server may take to come up.
READY_SECONDS=60
DOC=docs/benchmarks.md
BEGIN_MARK='<!-- bench/compare.sh: begin (generated; edit the script, not this section) -->'
END_MARK='<!-- bench/compare.sh: end -->'
# Every target, in the order they run and appear in the table.
TARGETS="trellis postgres-serializable postgres-occ redis etcd"

WORK=$(mktemp -d /tmp/trellis-compare.XXXXXX)
# log, PIDS (stopped newest first on exit), stop_pid, free_port,
# tree_cpu_ticks, TRELLIS (the release binary, built unless TRELLIS_BIN).
source bench/lib.sh

wait_port() { # port what
    for _ in $(seq 1 $((READY_SECONDS * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "error: $2 did not listen on 127.0.0.1:$1 in ${READY_SECONDS}s" >&2
    return 1
}

# --- installing what is missing -------------------------------------------
apt_updated=
need_apt() {
    if [[ -z $apt_updated ]]; then
        apt-get update -qq || return 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v python3 >/dev/null || { echo "error: python3 is needed" >&2; exit 1; }
command -v redis-server >/dev/null || { log "installing redis-server"; need_apt redis-server; }
ETCD_NOTE=""
if ! command -v etcd >/dev/null; then
    log "installing etcd"
    need_apt etcd-server etcd-client || ETCD_NOTE="not measured: etcd is not installed and \`apt-get install etcd-server etcd-client\` failed"
fi
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [[ -z $PG_BIN || ! -x $PG_BIN/initdb ]]; then
    log "installing PostgreSQL"
    need_apt postgresql
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

# The root PIDs of each system's server processes (their trees are
# measured).
declare -A SERVER_PIDS TARGET_URL TARGET_FLAGS
started() { # system pid
    PIDS+=("$2")
    SERVER_PIDS[$1]="${SERVER_PIDS[$1]:-} $2"
}

# --- etcd: 3 members -------------------------------------------------------
ETCD_VERSION=""
if [[ -z $ETCD_NOTE ]]; then
    log "starting a 3-member etcd cluster"
    declare -a ETCD_CLIENT ETCD_PEER
    cluster=""
    for i in 1 2 3; do
        ETCD_CLIENT[i]=$(free_port)
        ETCD_PEER[i]=$(free_port)
        cluster+="${cluster:+,}e$i=http://127.0.0.1:${ETCD_PEER[i]}"
    done
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$WORK/etcd$i" \
            --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[i]}" \
            --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[i]}" \
            --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token trellis-compare --log-level error \
            >"$WORK/etcd$i.log" 2>&1 &
        started etcd $!
    done
    ETCD_ENDPOINTS="127.0.0.1:${ETCD_CLIENT[1]},127.0.0.1:${ETCD_CLIENT[2]},127.0.0.1:${ETCD_CLIENT[3]}"
    for i in 1 2 3; do wait_port "${ETCD_CLIENT[i]}" "etcd member $i"; done
    for _ in $(seq 1 $((READY_SECONDS * 2))); do
        ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && break
        sleep 0.5
    done
    ETCD_VERSION=$(etcd --version | sed -n 1p)
    TARGET_URL[etcd]="etcd://$ETCD_ENDPOINTS"
    TARGET_FLAGS[etcd]="--connections $GRPC_CONNECTIONS"
fi

# --- PostgreSQL: primary + synchronous standby -----------------------------
log "starting PostgreSQL: a primary and one synchronous standby"
# Commands that must run as the PostgreSQL user. setpriv execs (no fork),
# so the PID of a server started through it is the server's own.
PG_AS=()
if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$WORK" postgres
    chown postgres "$WORK"
    PG_AS=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
PG_PRIMARY=$(free_port)
PG_STANDBY=$(free_port)
"${PG_AS[@]}" "$PG_BIN/initdb" -D "$WORK/pg-primary" -U postgres --auth=trust >"$WORK/initdb.log" 2>&1
cat >>"$WORK/pg-primary/postgresql.conf" <<EOF
port = $PG_PRIMARY
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 4
synchronous_standby_names = 'standby1'
synchronous_commit = on
max_connections = 200
# As an operator would tune it for this run: the data and the WAL of a
# whole run in memory and no checkpoint inside it, and a short commit
# delay for group commit under many committers (2-3% more w1-rmw here
# than the defaults, measured 2026-12-06; see docs/benchmarks.md).
shared_buffers = 2GB
wal_buffers = 64MB
max_wal_size = 8GB
checkpoint_timeout = 30min
effective_cache_size = 8GB
commit_delay = 100
commit_siblings = 5
EOF
"${PG_AS[@]}" "$PG_BIN/postgres" -D "$WORK/pg-primary" >"$WORK/pg-primary.log" 2>&1 &
started postgres $!
pg_ready() { # port what
    for _ in $(seq 1 $((READY_SECONDS * 10))); do
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" && return 0
        sleep 0.1
    done
    echo "error: $2 did not accept connections on 127.0.0.1:$1 in ${READY_SECONDS}s" >&2
    return 1
}
pg_ready "$PG_PRIMARY" "the PostgreSQL primary"
"${PG_AS[@]}" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY" -U postgres -D "$WORK/pg-standby" -X stream
"${PG_AS[@]}" touch "$WORK/pg-standby/standby.signal"
cat >>"$WORK/pg-standby/postgresql.conf" <<EOF
port = $PG_STANDBY
primary_conninfo = 'host=127.0.0.1 port=$PG_PRIMARY user=postgres application_name=standby1'
EOF
"${PG_AS[@]}" "$PG_BIN/postgres" -D "$WORK/pg-standby" >"$WORK/pg-standby.log" 2>&1 &
started postgres $!
pg_ready "$PG_STANDBY" "the PostgreSQL standby"
sync_state=""
for _ in $(seq 1 $((READY_SECONDS * 2))); do
    sync_state=$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PRIMARY" -U postgres -At \
        -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'" 2>/dev/null || true)
    [[ $sync_state == sync ]] && break
    sleep 0.5
done
[[ $sync_state == sync ]] || { echo "error: the standby is not synchronous ($sync_state)" >&2; exit 1; }
PG_VERSION=$("$PG_BIN/postgres" --version)
PG_URL="postgres://postgres@127.0.0.1:$PG_PRIMARY/postgres"
TARGET_URL[postgres-serializable]=$PG_URL
TARGET_FLAGS[postgres-serializable]="--pg-mode serializable"
TARGET_URL[postgres-occ]=$PG_URL
TARGET_FLAGS[postgres-occ]="--pg-mode occ"

# --- Redis: primary + replica ------------------------------------------------
log "starting Redis: a primary and one replica (appendfsync always)"
REDIS_PRIMARY=$(free_port)
REDIS_REPLICA=$(free_port)
start_redis() { # name port extra-args...
    local name=$1 port=$2
    shift 2
    mkdir -p "$WORK/$name"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$WORK/$name" \
        --appendonly yes --appendfsync always --save '' --daemonize no \
        --logfile "$WORK/$name.log" "$@" &
    started redis $!
    wait_port "$port" "$name"
}
start_redis redis-primary "$REDIS_PRIMARY"
start_redis redis-replica "$REDIS_REPLICA" --replicaof 127.0.0.1 "$REDIS_PRIMARY"
link=""
for _ in $(seq 1 $((READY_SECONDS * 2))); do
    link=$(redis-cli -p "$REDIS_REPLICA" info replication | tr -d '\r' | sed -n 's/^master_link_status://p')
    [[ $link == up ]] && break
    sleep 0.5
done
[[ $link == up ]] || { echo "error: the Redis replica did not reach its primary ($link)" >&2; exit 1; }
REDIS_VERSION=$(redis-server --version | awk '{print $3}' | sed 's/^v=//')
TARGET_URL[redis]="redis://127.0.0.1:$REDIS_PRIMARY"
TARGET_FLAGS[redis]=""

# --- trellis dev -------------------------------------------------------------
log "starting trellis dev --groups 3 --replicas 2"
TRELLIS_PORT=$(free_port)
"$TRELLIS" dev --insecure --data-dir "$WORK/trellis" --listen "127.0.0.1:$TRELLIS_PORT" --groups 3 --replicas 2 \
    >"$WORK/trellis.log" 2>&1 &
started trellis $!
for _ in $(seq 1 $((READY_SECONDS * 10))); do
    grep -q '^READY ' "$WORK/trellis.log" && break
    sleep 0.1
done
grep -q '^READY ' "$WORK/trellis.log" || { cat "$WORK/trellis.log" >&2; exit 1; }
TARGET_URL[trellis]="trellis://127.0.0.1:$TRELLIS_PORT"
TARGET_FLAGS[trellis]="--connections $GRPC_CONNECTIONS --route $ROUTE"

# --- the runs ----------------------------------------------------------------
# Workload by workload, every target in turn: the figures compared with
# each other are measured within a minute or so of each other, so that a
# machine whose other load drifts (it is shared) skews them less.
# ORDER=reverse runs the targets of each workload in the opposite order,
# to see whether going first or last moves a figure.
RUN_ORDER=$TARGETS
if [[ ${ORDER:-} == reverse ]]; then
    RUN_ORDER=$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')
fi
[[ -z ${TARGET_URL[etcd]:-} ]] && log "etcd: not measured ($ETCD_NOTE)"
RUN_ID=$(date +%s)
for workload in $WORKLOADS; do
    # NAME or NAME:zipf=S (the load tester's --zipf S).
    skew=()
    case $workload in
        *:zipf=*) skew=(--zipf "${workload#*:zipf=}") ;;
        *:*) echo "error: WORKLOADS: '$workload' is neither NAME nor NAME:zipf=S" >&2; exit 2 ;;
    esac
    for target in $RUN_ORDER; do
        [[ -z ${TARGET_URL[$target]:-} ]] && continue
        log "$workload against $target: $VUS VUs for $DURATION"
        out="$WORK/result-$target-$workload"
        read -r -a flags <<<"${TARGET_FLAGS[$target]}"
        read -r -a servers <<<"${SERVER_PIDS[${target%%-*}]}"
        cut -d' ' -f1 /proc/loadavg >"$out.load"
        before=$(tree_cpu_ticks "${servers[@]}")
        if ! client_cpu "$out.client" "$TRELLIS" load --quiet --target "${TARGET_URL[$target]}" \
            --workload "${workload%%:*}" "${skew[@]}" --vus "$VUS" --duration "$DURATION" "${flags[@]}" \
            --key-prefix "cmp$RUN_ID-$target-${workload//[:=.]/-}" \
            --summary-export "$out.json" >"$out.txt" 2>"$out.err"; then
            log "$workload against $target failed: $(tail -1 "$out.err")"
        fi
        # Let backends whose clients left exit and be reaped (their CPU
        # then shows in the parent's).
        sleep 0.5
        after=$(tree_cpu_ticks "${servers[@]}")
        echo $((after - before)) >"$out.server"
        grep -E 'txn_duration\.|iterations\.|txn_failed|txn_conflicts' "$out.txt" >&2 || true
    done
done

# --- the table -----------------------------------------------------------------
log "writing $DOC"
export ROUTE WORK WORKLOADS TARGETS RUN_ORDER DURATION VUS ETCD_VERSION ETCD_NOTE PG_VERSION REDIS_VERSION \
    GRPC_CONNECTIONS DOC BEGIN_MARK END_MARK
export CLK_TCK="$(getconf CLK_TCK)"
export MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
export TRELLIS_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
python3 - <<'PY'
import json, os, datetime
work, workloads = os.environ["WORK"], os.environ["WORKLOADS"].split()
targets = os.environ["TARGETS"].split()
tck = int(os.environ["CLK_TCK"])
NAMES = {
    "trellis": "Trellis",
    "postgres-serializable": "PostgreSQL serializable",
    "postgres-occ": "PostgreSQL occ",
    "redis": "Redis",
    "etcd": "etcd",
}
# A peer is a system; its best figure is its best mode's.
PEERS = {
    "PostgreSQL": ["postgres-serializable", "postgres-occ"],
    "Redis": ["redis"],
    "etcd": ["etcd"],
}
# The goals of issue 20 (ratios from one run).
GOALS = {("w1-rmw", "PostgreSQL"): 1.2, ("w2-transfer", "PostgreSQL"): 1.0,
         ("w3-read", "PostgreSQL"): 1.0}
CPU_GOAL_MS = ("w1-rmw", 0.15)
# Under skew (NAME:zipf=S beside NAME), issue 20 asks Trellis to lose no
# more of its uniform throughput than PostgreSQL loses of its own.
SKEW_GOAL_PEER = "PostgreSQL"

def label(workload):
    """w2-transfer:zipf=0.99 -> 'w2-transfer, zipf 0.99'."""
    name, _, skew = workload.partition(":zipf=")
    return f"{name}, zipf {skew}" if skew else name

def result(target, workload):
    base = f"{work}/result-{target}-{workload}"
    try:
        with open(base + ".json") as f:
            m = json.load(f)["metrics"]
    except (OSError, ValueError):
        return None
    iterations = m["iterations"]["values"]["count"]
    failed = m["txn_failed"]["values"]["passes"]
    committed = iterations - failed
    server_s = int(open(base + ".server").read()) / tck
    client_s = float(open(base + ".client").read())
    per = lambda s: 1000 * s / committed if committed else float("nan")
    return {
        # Committed transactions per second: an iteration that failed (a
        # Redis commit no replica acknowledged, say) does not count.
        "rate": m["iterations"]["values"]["rate"] * committed / iterations if iterations else 0.0,
        "p50": m["txn_duration"]["values"]["med"],
        "p99": m["txn_duration"]["values"]["p(99)"],
        "failed": failed / iterations if iterations else 0.0,
        "conflicts": m["txn_conflicts"]["values"]["count"],
        "server_ms": per(server_s),
        "client_ms": per(client_s),
        "load": open(base + ".load").read().strip(),
    }

res = {(t, w): result(t, w) for t in targets for w in workloads}
etcd_note = os.environ.get("ETCD_NOTE", "")
cores = os.cpu_count() or 1
loads = [float(r["load"]) for r in res.values() if r]
busy = []
if loads and max(loads) > cores:
    busy = [f"- **The machine was busy**: the load average reached {max(loads):.1f} on {cores} cores "
            "during the runs; other work competed for the CPU, so these figures are not its capacity "
            "and one run's ratios are not a verdict."]
lines = [os.environ["BEGIN_MARK"], "",
    "## Trellis vs PostgreSQL, Redis and etcd (`bench/compare.sh`)", "",
    f"Run of {datetime.date.today().isoformat()}, commit {os.environ['TRELLIS_COMMIT']}: "
    f"`DURATION={os.environ['DURATION']} VUS={os.environ['VUS']}"
    f"{' ORDER=reverse' if os.environ['RUN_ORDER'].split() != targets else ''} bench/compare.sh` "
    f"(each workload against every target in turn: {', '.join(NAMES[t] for t in os.environ['RUN_ORDER'].split())}).", "",
    f"- Machine: {os.environ['MACHINE']}; every server and the load tester share it, on loopback. "
    "`load` is the 1-minute load average when the run started.",
    f"- Trellis: release `trellis dev`, 3 groups, 2 replicas per group, SYNC commits; "
    f"load tester on {os.environ['GRPC_CONNECTIONS']} gRPC channels, `--route {os.environ['ROUTE']}`.",
    f"- PostgreSQL: primary + one synchronous standby (`synchronous_commit = on`), {os.environ['PG_VERSION']}; "
    "one session per VU. *serializable*: `BEGIN; SELECT; INSERT … ON CONFLICT DO UPDATE; COMMIT` at SERIALIZABLE. "
    "*occ*: READ COMMITTED, the read in autocommit, then writes conditional on the row's version "
    "(w1-rmw: one `UPDATE … WHERE ver = $read`; w2-transfer: one transaction of two; 0 rows = conflict).",
    f"- Redis {os.environ['REDIS_VERSION']}: primary + one replica, both `appendonly yes`, `appendfsync always`; "
    "one connection per VU; `WATCH; MGET` then `MULTI; SET…; EXEC; WAIT 1 5000` — a commit no replica "
    "acknowledged counts as failed, not as committed.",
    (f"- etcd: 3 members ({os.environ['ETCD_VERSION']}), linearizable reads, compare-mod-revision-then-put "
     f"transactions; {os.environ['GRPC_CONNECTIONS']} gRPC channels spread over the members."
     if not etcd_note else f"- etcd: {etcd_note}."),
    "- Same workload code for all (`trellis load`), uniform over 100,000 keys (a *zipf S* row: keys "
    "drawn Zipf(S), a few hot keys taking most transactions), 100-byte values; "
    "conflicts retried up to 10 attempts. it/s is committed transactions per second; p50/p99 of `txn_duration`.",
    "- Server CPU: user+system time of the system's whole server process tree (`trellis dev` and its "
    "processes; the PostgreSQL primary and standby with their backends; both `redis-server`s; the etcd "
    "members), from /proc before and after the run, per committed transaction. Client CPU: the load "
    "tester's own, per committed transaction.",
    ] + busy + ["",
    "| workload | target | it/s | p50 ms | p99 ms | failed | conflicts | server CPU ms/txn | client CPU ms/txn | load |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for w in workloads:
    for t in targets:
        r = res[(t, w)]
        if r is None:
            why = etcd_note if t == "etcd" and etcd_note else "run failed (see the log)"
            lines.append(f"| {label(w)} | {NAMES[t]} | — | — | — | — | — | — | — | {why} |")
            continue
        lines.append(f"| {label(w)} | {NAMES[t]} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['failed']*100:.2f}% | {r['conflicts']} | {r['server_ms']:.3f} | "
                     f"{r['client_ms']:.3f} | {r['load']} |")
lines += ["",
    "Trellis against each peer's best figure in this run (for PostgreSQL, the better of its two clients):", "",
    "| workload | peer (best) | Trellis/peer it/s | Trellis/peer server CPU per txn | goal (issue 20) | met in this run? |",
    "|---|---|---:|---:|---|---|"]
for w in workloads:
    tr = res[("trellis", w)]
    for peer, modes in PEERS.items():
        got = [(res[(m, w)], m) for m in modes if res.get((m, w))]
        if tr is None or not got:
            continue
        best, mode = max(got, key=lambda x: x[0]["rate"])
        ratio = tr["rate"] / best["rate"] if best["rate"] else float("inf")
        cpu = tr["server_ms"] / best["server_ms"] if best["server_ms"] else float("inf")
        goal = GOALS.get((w, peer))
        name = f"{peer} ({NAMES[mode].split(' ', 1)[1]})" if len(modes) > 1 else peer
        lines.append(f"| {label(w)} | {name} | {ratio:.2f}× | {cpu:.2f}× | "
                     f"{'≥ %.1f×' % goal if goal else '—'} | "
                     f"{('yes' if ratio >= goal else '**no**') if goal else '—'} |")
w, bound = CPU_GOAL_MS
if res.get(("trellis", w)):
    ms = res[("trellis", w)]["server_ms"]
    lines += ["", f"Trellis server CPU per {w}: {ms:.3f} ms (goal ≤ {bound} ms: "
              f"{'met' if ms <= bound else '**not met**'})."]
# Skewed against uniform: each system's best figure under skew over its
# best uniform figure, measured in this run.
def best_rate(system_modes, w):
    got = [res[(m, w)]["rate"] for m in system_modes if res.get((m, w))]
    return max(got) if got else None
skewed = [w for w in workloads if ":zipf=" in w and w.split(":")[0] in workloads]
if skewed:
    lines += ["", "Under skew: each system's throughput with the hot keys over its uniform throughput "
              "(both its best mode, this run):", "",
              "| workload | system | uniform it/s | skewed it/s | skewed/uniform | goal (issue 20) | met in this run? |",
              "|---|---|---:|---:|---:|---|---|"]
    for w in skewed:
        base = w.split(":")[0]
        systems = [("Trellis", ["trellis"])] + list(PEERS.items())
        # system -> (uniform, skewed), for the systems measured both ways.
        rates = {system: (best_rate(modes, base), best_rate(modes, w)) for system, modes in systems}
        rates = {system: (u, z) for system, (u, z) in rates.items() if u and z is not None}
        peer = rates.get(SKEW_GOAL_PEER)
        for system, (u, z) in rates.items():
            goal = peer[1] / peer[0] if system == "Trellis" and peer else None
            lines.append(f"| {label(w)} | {system} | {u:,.0f} | {z:,.0f} | {z / u:.2f} | "
                         f"{f'≥ {SKEW_GOAL_PEER} ({goal:.2f})' if goal is not None else '—'} | "
                         f"{('yes' if z / u >= goal else '**no**') if goal is not None else '—'} |")
lines += ["", os.environ["END_MARK"]]
section = "\n".join(lines) + "\n"
doc = os.environ["DOC"]
text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
b, e = os.environ["BEGIN_MARK"], os.environ["END_MARK"]
if b in text and e in text:
    text = text[:text.index(b)] + section.rstrip("\n") + text[text.index(e) + len(e):]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(doc, "w").write(text)
print(section)
PY
