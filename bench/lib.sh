# Shared by the benchmarks (bench/compare.sh, bench/reshard.sh,
# bench/metrics-cost.sh): sourced after `cd` to the repository root and
# after WORK is set to the run's scratch directory. Gives
#   log TEXT          a progress line on stderr
#   PIDS              append every process started; all are stopped on exit
#   stop_pid PID      SIGTERM, up to 10 s, then SIGKILL; reaps it
#   free_port         a port on 127.0.0.1 nothing listens on
#   client_cpu FILE COMMAND...  runs COMMAND; its user+system seconds
#                     (children included) go to FILE; its exit status is kept
#   tree_cpu_ticks PID...  CPU ticks (user+system) used so far by these
#                     processes and every process under them, including
#                     children that exited and were reaped (a PostgreSQL
#                     backend whose client left); getconf CLK_TCK per second
#   TRELLIS           the release binary ($TRELLIS_BIN, or built now)
# and a trap that stops every process in PIDS (newest first) and removes
# WORK on any exit (KEEP_WORK=1 keeps it, to look at).

log() { printf '== %s\n' "$*" >&2; }

PIDS=()
stop_pid() { # pid: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    if [[ -n ${KEEP_WORK:-} ]]; then
        log "kept $WORK (KEEP_WORK)"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

client_cpu() { # file command...
    python3 -c '
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{r.ru_utime + r.ru_stime}\n")
sys.exit(rc)' "$@"
}

tree_cpu_ticks() {
    python3 - "$@" <<'PY'
import os, sys
roots = {int(p) for p in sys.argv[1:]}
parent, ticks = {}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    fields = stat[stat.rindex(")") + 2:].split()
    parent[int(pid)] = int(fields[1])
    # utime, stime, cutime, cstime: a process's own time and that of the
    # children it has reaped (which are gone from /proc).
    ticks[int(pid)] = sum(int(f) for f in fields[11:15])
def under(pid):
    while pid > 1:
        if pid in roots:
            return True
        pid = parent.get(pid, 0)
    return False
print(sum(t for pid, t in ticks.items() if under(pid)))
PY
}

if [[ -n ${TRELLIS_BIN:-} ]]; then
    TRELLIS=$TRELLIS_BIN
else
    log "building the release binary"
    cargo build --release --bin trellis >&2
    TRELLIS=target/release/trellis
fi
