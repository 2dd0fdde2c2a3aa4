# bench/lib/processes.sh: the processes a benchmark starts, and stopping them.
# Sourced by bench/proxy.sh, bench/tls.sh, bench/logs.sh and bench/backup.sh once they have made their temp dir
# ($TMP): every process started through `run` or added to PIDS is stopped (with
# its children) in reverse order when the script exits, also on Ctrl-C or error,
# and $TMP is removed.
# shellcheck shell=bash disable=SC2317 # cleanup is called by the trap

PIDS=() # every process the script started, stopped in reverse order on exit
CLEANUP_DIRS=() # directories outside $TMP, removed on exit

children_of() {
    local stat
    for stat in /proc/[0-9]*/stat; do
        # The field after the parenthesised command name is the state, then the ppid.
        [[ $(sed 's/.*) //' "$stat" 2>/dev/null | cut -d' ' -f2) = "$1" ]] && basename "$(dirname "$stat")"
    done 2>/dev/null || true
}

# Stops one process we started (and its children, e.g. nginx's workers): TERM,
# up to 5 s, then KILL.
stop_pid() {
    local pid=$1 kids i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kids=$(children_of "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    for kid in $kids; do kill -KILL "$kid" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    rm -rf "$TMP"
    # Directories a script made outside $TMP (backup.sh's restores in /dev/shm).
    for i in "${CLEANUP_DIRS[@]}"; do rm -rf "$i"; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p = "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Runs a command in the background and waits for it: bash runs its traps only
# between commands, and `wait` is one it can interrupt, so Ctrl-C or a TERM stops
# the run at once instead of after the command.
run() {
    "$@" &
    local pid=$! rc=0
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# find_gatehouse WHAT COMMAND PURPOSE: sets GH to $GATEHOUSE_BIN or a fresh
# release build (cargo build --release --locked -p gatehouse, output in
# $TMP/build.log), and GH_PROBLEM to why it cannot be measured (empty when it
# can): no binary, or no COMMAND in it (PURPOSE names what is missing). WHAT
# prefixes the complaint ("proxy", "tls", "logs").
find_gatehouse() {
    local what=$1 command=$2 purpose=$3 target
    GH_PROBLEM=
    if [[ -n ${GATEHOUSE_BIN:-} ]]; then
        GH=$GATEHOUSE_BIN
    else
        echo "$what: building gatehouse (cargo build --release --locked -p gatehouse in $ROOT)"
        target=${CARGO_TARGET_DIR:-target}
        [[ $target = /* ]] || target=$ROOT/$target
        GH=$target/release/gatehouse
        if ! (cd "$ROOT" && cargo build --release --locked -p gatehouse --quiet) >"$TMP/build.log" 2>&1; then
            tail -n 20 "$TMP/build.log" >&2
            GH_PROBLEM="cargo build --release --locked -p gatehouse failed (output above)"
        fi
    fi
    if [[ -z $GH_PROBLEM ]]; then
        if [[ ! -x $GH ]]; then
            GH_PROBLEM="no gatehouse binary at $GH"
        elif ! "$GH" "$command" --help >/dev/null 2>&1; then
            GH_PROBLEM="$GH has no '$command' command yet ($purpose is not in this build)"
        fi
    fi
    [[ -z $GH_PROBLEM ]] || echo "$what: error: gatehouse cannot be measured: $GH_PROBLEM; measuring the others" >&2
}

# cpu_ticks PID: its CPU time so far (utime + stime, in clock ticks), from
# /proc/PID/stat past the command name (which may hold spaces).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
