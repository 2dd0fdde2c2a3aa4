#!/usr/bin/env bash
# bench/backup.sh: the backup server, `gatehouse serve` with a [backup_server]
# section against `rclone serve restic`, both speaking restic's REST protocol on
# loopback, with the same restic client and the same files, in one run.
#
# The servers run pinned to the same core (SERVER_CPU), one after the other,
# each with a fresh empty directory; restic (and everything else) runs on
# another core (CLIENT_CPU). Like for like: all with HTTP basic auth from the
# same htpasswd file (one user, a {SHA} entry: cheap to check, so neither pays
# for bcrypt on every request), private repositories, deletes allowed (no
# append-only), plain HTTP. gatehouse runs twice: as configured by default
# (every upload's SHA-256 checked against its name, as rest-server does), and
# as "gatehouse-noverify" (verify_uploads = false, rest-server's
# --no-verify-upload), which does the same work as rclone, which checks nothing.
#
# ROUNDS rounds (2), the order of the servers reversed every other round
# (rclone gatehouse gatehouse-noverify, then the other way round): whoever
# goes later finds more of the machine's memory dirty with the earlier runs'
# restores, which slowed a restore by half in runs of one order only. The
# table gives each figure's mean over the rounds.
#
# The files: bench/backup/dataset.py writes DATA_MIB MiB (1 GiB; --quick: 100
# MiB) of small (0-64 KiB), medium (64 KiB-2 MiB) and large (16-128 MiB) files,
# half text-like (about 2:1 with zstd), half random, seeded, no two alike. For
# each server, with a cache dir of its own:
#   restic init
#   restic backup DATA              wall time, MiB/s = data bytes / wall, server CPU
#   restic restore latest --target  the same figures; then diff -r against DATA
#   restic check                    wall time, server CPU
# Server CPU is utime + stime of the server process (/proc/PID/stat).
#
# How to read it: MiB/s above 1 in the ratio gatehouse/rclone = gatehouse is
# faster; server CPU ratio below 1 = gatehouse costs less. restic on one core
# is usually the limit (chunking, SHA-256, AES, zstd): then the server CPU
# figures are the ones to compare. See bench/README.md.
#
#   bench/backup.sh --quick      # smoke run: 100 MiB, under a minute
#   bench/backup.sh              # full run: 1 GiB
#
# No root needed when restic and rclone are installed; if either is missing it
# is installed with apt (root). Everything started is stopped by pid when the
# script exits (also on Ctrl-C or error) and the temp dir is removed.
# shellcheck disable=SC2317 # cleanup is called by the trap
set -euo pipefail

die() { echo "backup: error: $*" >&2; exit 1; }
say() { echo "backup: $*"; }

QUICK=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,/^# shellcheck disable/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$arg' (use --quick, or --help)" ;;
    esac
done
if ((QUICK)); then d_mib=100; else d_mib=1024; fi

DATA_MIB=${DATA_MIB:-$d_mib}             # MiB of files to back up
SEED=${SEED:-1}                          # bench/backup/dataset.py's seed
SERVER_CPU=${SERVER_CPU:-0}              # the core both servers are pinned to
CLIENT_CPU=${CLIENT_CPU:-1}              # the core of restic and everything else
SERVERS=${SERVERS:-rclone gatehouse gatehouse-noverify} # which servers to measure, in the first round's order
ROUNDS=${ROUNDS:-2}                      # rounds, the order reversed every other one
TMPDIR_BASE=${TMPDIR_BASE:-/tmp}         # where the data and the repositories go
RESTORE_BASE=${RESTORE_BASE:-}           # where the restores go (default: /dev/shm when it has room)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STARTED=$(date +%s)
for v in DATA_MIB SEED SERVER_CPU CLIENT_CPU ROUNDS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((DATA_MIB >= 1)) || die "DATA_MIB must be at least 1"
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((SERVER_CPU != CLIENT_CPU)) || die "SERVER_CPU and CLIENT_CPU must be different cores"
read -r -a TARGETS <<<"$SERVERS"
((${#TARGETS[@]} >= 1)) || die "SERVERS is empty (pick from: rclone gatehouse gatehouse-noverify)"
for t in "${TARGETS[@]}"; do
    [[ $t =~ ^(rclone|gatehouse|gatehouse-noverify)$ ]] ||
        die "SERVERS: unknown server '$t' (pick from: rclone gatehouse gatehouse-noverify)"
done
has() { [[ " ${TARGETS[*]} " = *" $1 "* ]]; }
has_gatehouse() { has gatehouse || has gatehouse-noverify; }

# ---------------------------------------------------------------- tools
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)"); }
need python3 python3
need taskset util-linux
need getconf libc-bin
need diff diffutils
need openssl openssl
need apt-get apt
has_gatehouse && [[ -z ${GATEHOUSE_BIN:-} ]] && need cargo "cargo (or rustup)"
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
ncpu=$(nproc --all)
((SERVER_CPU < ncpu && CLIENT_CPU < ncpu)) ||
    die "this machine has $ncpu CPUs; the benchmark needs cores $SERVER_CPU and $CLIENT_CPU (set SERVER_CPU, CLIENT_CPU)"
taskset -c "$SERVER_CPU" true 2>/dev/null || die "cannot pin to core $SERVER_CPU (not in this process's CPU set?)"
taskset -c "$CLIENT_CPU" true 2>/dev/null || die "cannot pin to core $CLIENT_CPU (not in this process's CPU set?)"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d "$TMPDIR_BASE/gatehouse-backup-bench.XXXXXX")
# shellcheck source=bench/lib/processes.sh
source "$ROOT/bench/lib/processes.sh"

# Installs Debian packages with apt, without letting their scripts start daemons
# (scripts/test.sh does the same).
apt_install() {
    local policy=/usr/sbin/policy-rc.d ours='' rc=0
    ((EUID == 0)) || die "need the Debian packages $* (run as root once, or: sudo apt-get install $*)"
    say "installing $* (apt-get install)"
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=$policy
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$TMP/apt.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        apt-get update -qq >>"$TMP/apt.log" 2>&1 || true
        rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$TMP/apt.log" 2>&1 || rc=$?
    fi
    [[ -z $ours ]] || rm -f "$ours"
    ((rc == 0)) || { tail -n 20 "$TMP/apt.log" >&2; die "apt-get install $* failed (output above)"; }
}
to_install=()
command -v restic >/dev/null 2>&1 || to_install+=(restic)
has rclone && ! command -v rclone >/dev/null 2>&1 && to_install+=(rclone)
((${#to_install[@]} == 0)) || apt_install "${to_install[@]}"
RESTIC_VERSION=$(restic version | awk '{ print $2 }')
RCLONE_VERSION=$(if has rclone; then rclone version 2>/dev/null | awk 'NR == 1 { print $2 }'; fi)

# ---------------------------------------------------------------- gatehouse binary
GH_PROBLEM= # why gatehouse cannot be measured, if it cannot
has_gatehouse && find_gatehouse backup serve "the backup server"

# ---------------------------------------------------------------- the files
DATA=$TMP/data
say "writing $DATA_MIB MiB of files (bench/backup/dataset.py, seed $SEED)"
run python3 "$ROOT/bench/backup/dataset.py" "$DATA" "$DATA_MIB" "$SEED" >"$TMP/dataset.txt" ||
    die "bench/backup/dataset.py failed"
read -r DATA_FILES DATA_BYTES <"$TMP/dataset.txt"
[[ -n ${DATA_BYTES:-} ]] || die "bench/backup/dataset.py printed no size"
# Written back now, not by the kernel's flusher threads during a measurement.
sync

# The restores go to memory (tmpfs) when there is room for two: written to
# the disk, a restore was held up by the writeback of the ones before it
# (7 s for the first of a run, 19 s for the sixth, against either server),
# and measured the disk, not the servers.
if [[ -z $RESTORE_BASE ]]; then
    RESTORE_BASE=$TMP
    shm_free=$(df -k --output=avail /dev/shm 2>/dev/null | tail -n1 | tr -d ' ')
    if [[ -w /dev/shm && ${shm_free:-0} =~ ^[0-9]+$ ]] && ((shm_free / 1024 > 2 * DATA_MIB + 256)); then
        RESTORE_BASE=/dev/shm
    fi
fi
RESTORES=$(mktemp -d "$RESTORE_BASE/gatehouse-backup-restore.XXXXXX")
CLEANUP_DIRS+=("$RESTORES")
# From here on, this script and everything it starts without a taskset of its
# own run on the client core, off the servers' core.
taskset -p -c "$CLIENT_CPU" $$ >/dev/null || die "cannot pin this script to core $CLIENT_CPU"

# One user for both servers. {SHA} is base64(SHA-1(password)).
USER_NAME=bench
USER_PASSWORD=bench-$$-$RANDOM
HTPASSWD=$TMP/htpasswd
printf '%s:{SHA}%s\n' "$USER_NAME" "$(printf '%s' "$USER_PASSWORD" | openssl sha1 -binary | openssl base64 -A)" >"$HTPASSWD"
export RESTIC_PASSWORD=bench-repository-password
unset RESTIC_REPOSITORY RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND
RESTIC=(taskset -c "$CLIENT_CPU" restic)

# ---------------------------------------------------------------- measuring
CLK_TCK=$(getconf CLK_TCK)
# Per-core jiffies, "cpuN busy steal total ..." for every core (as in tls.sh).
cores_snapshot() {
    awk '$1 ~ /^cpu[0-9]+$/ { t = 0; for (i = 2; i <= 9; i++) t += $i; printf "%s %d %d %d ", $1, t - $5 - $6 - $9, $9, t }' /proc/stat
}
core_busy() { # "BUSY%" of core $3 between snapshots $1 and $2
    awk -v a="$1" -v b="$2" -v c="cpu$3" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i += 4) if (x[i] == c) { t = y[i + 3] - x[i + 3]; bu = y[i + 1] - x[i + 1] }
        if (t > 0) printf "%.0f%%", bu * 100 / t; else printf "?" }'
}
# "PID COMM TICKS CPU" for every process: utime + stime with its reaped
# children's, and the core it last ran on.
procs_snapshot() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk '{
        o = index($0, "("); c = 0
        for (k = length($0); k > o; k--) if (substr($0, k, 1) == ")") { c = k; break }
        comm = substr($0, o + 1, c - o - 1); gsub(/ /, "_", comm)
        split(substr($0, c + 2), f, " ")
        print substr($0, 1, o - 2), comm, f[12] + f[13] + f[14] + f[15], f[37] }'
}
# The 3 processes but $3 that used the most CPU between snapshots $1 and $2 (any core).
top_others() {
    awk -v skip="$3" -v hz="$CLK_TCK" 'NR == FNR { t[$1] = $3; next }
        $1 != skip && $3 - t[$1] > 0 { printf "%s(%s) %.2f s, last on cpu %s\n", $2, $1, ($3 - t[$1]) / hz, $4 }' \
        <(echo "$1") <(echo "$2") | sort -t' ' -k2 -g -r | head -n 3 | paste -sd';' | sed 's/;/; /g'
}
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.3f", b - a }'; }
human() { numfmt --to=iec --suffix=B --format='%.1f' "$1" 2>/dev/null || echo "${1}B"; }
disk_bytes() { du -s --block-size=1 "$1" | awk '{ print $1 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }

# Waits until 127.0.0.1:$1 accepts TCP connections while process $2 lives ($3 names it, $4 is its log).
wait_port() {
    local port=$1 pid=$2 name=$3 log=$4 i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { echo "backup: $name exited while starting; its log:" >&2; tail -n 20 "$log" >&2; return 1; }
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "backup: $name does not accept connections on 127.0.0.1:$port after 10 s; its log:" >&2
    tail -n 20 "$log" >&2
    return 1
}

# ---------------------------------------------------------------- servers
# start_* start the server on SERVER_CPU with an empty directory and wait for
# it; they set STARTED_PID, STORE (the directory) and PORT.
STARTED_PID=
declare -A STORE PORT CMDLINE

start_rclone() {
    local dir=$TMP/rclone port
    port=$(free_port)
    mkdir -p "$dir/store"
    : >"$dir/rclone.conf" # no remotes: keeps rclone off ~/.config/rclone
    CMDLINE[rclone]="rclone serve restic --addr 127.0.0.1:$port --htpasswd HTPASSWD --private-repos DIR"
    taskset -c "$SERVER_CPU" env RCLONE_CONFIG="$dir/rclone.conf" rclone serve restic --addr "127.0.0.1:$port" \
        --htpasswd "$HTPASSWD" --private-repos "$dir/store" >"$dir/server.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port" "$pid" rclone "$dir/server.log" || return 1
    STARTED_PID=$pid
    STORE[rclone]=$dir/store
    PORT[rclone]=$port
}

gatehouse_server() { # NAME VERIFY
    local name=$1 verify=$2 dir=$TMP/$1 port
    [[ -z $GH_PROBLEM ]] || return 1
    port=$(free_port)
    mkdir -p "$dir/store"
    cat >"$dir/gatehouse.toml" <<EOF
# written by bench/backup.sh
[backup_server]
listen = "127.0.0.1:$port"
dir = "$dir/store"
htpasswd = "$HTPASSWD"
private_repos = true
append_only = false
verify_uploads = $verify
EOF
    if ! "$GH" check -c "$dir/gatehouse.toml" >"$dir/check.log" 2>&1; then
        cat "$dir/check.log" >&2
        GH_PROBLEM="gatehouse check refuses a config with [backup_server] (output above)"
        return 1
    fi
    CMDLINE[$name]="gatehouse serve -c FILE ([backup_server] listen, dir, htpasswd, private_repos = true, append_only = false, verify_uploads = $verify)"
    taskset -c "$SERVER_CPU" "$GH" serve -c "$dir/gatehouse.toml" >"$dir/server.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port" "$pid" "$name" "$dir/server.log" || return 1
    STARTED_PID=$pid
    STORE[$name]=$dir/store
    PORT[$name]=$port
}
start_gatehouse() { gatehouse_server gatehouse true; }
start_gatehouse-noverify() { gatehouse_server gatehouse-noverify false; }

# step NAME PID KEY CMD...: runs CMD (restic, on the client core), timed, with
# the server's CPU; sets SECS, CPU (s), CPUPCT (of its core), CLIENT (client
# core busy), MIBS (DATA_BYTES / SECS) of KEY.
declare -A SECS CPU CPUPCT CLIENT MIBS
DISTURBED=() # steps during which something else ran on the server core
step() {
    local name=$1 pid=$2 key=$3 c0 c1 s0 s1 t0 t1 rc=0 other p0 p1
    shift 3
    sync
    p0=$(procs_snapshot)
    c0=$(cpu_ticks "$pid")
    s0=$(cores_snapshot)
    t0=$(now)
    run "$@" >"$TMP/$key.log" 2>&1 || rc=$?
    t1=$(now)
    s1=$(cores_snapshot)
    p1=$(procs_snapshot)
    kill -0 "$pid" 2>/dev/null || { echo "backup: $name died during $key" >&2; return 1; }
    c1=$(cpu_ticks "$pid")
    ((rc == 0)) || { tail -n 20 "$TMP/$key.log" >&2; echo "backup: restic ($key) against $name failed with status $rc (output above)" >&2; return 1; }
    SECS[$key]=$(since "$t0" "$t1")
    CPU[$key]=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }')
    CPUPCT[$key]=$(awk -v c="${CPU[$key]}" -v s="${SECS[$key]}" 'BEGIN { printf "%.0f%%", c / s * 100 }')
    CLIENT[$key]=$(core_busy "$s0" "$s1" "$CLIENT_CPU")
    MIBS[$key]=$(awk -v b="$DATA_BYTES" -v s="${SECS[$key]}" 'BEGIN { printf "%.1f", b / 1048576 / s }')
    other=$(awk -v b="$(core_busy "$s0" "$s1" "$SERVER_CPU")" -v c="${CPU[$key]}" -v s="${SECS[$key]}" \
        'BEGIN { sub(/%/, "", b); printf "%.0f", b - c / s * 100 }')
    if ((other > 15)); then
        echo "  warning: something else had ${other}% of core $SERVER_CPU during $key; its figures are disturbed"
        echo "           busiest other processes (any core): $(top_others "$p0" "$p1" "$pid")"
        DISTURBED+=("$key: ${other}% of core $SERVER_CPU")
    fi
}

declare -A FAILED=() REPO_BYTES RESTORED
# measure SERVER ROUND: one full cycle against a fresh server; the figures go
# under "SERVER.ROUND.STEP".
measure() {
    local t=$1 n=$2 pid url cache=$TMP/cache-$1 target=$RESTORES/restore-$1 k=$1.$2
    if ! "start_$t"; then
        FAILED[$t]="did not start"
        [[ $t = gatehouse* && -n $GH_PROBLEM ]] && FAILED[$t]=$GH_PROBLEM
        printf '  %-18s FAILED: %s\n' "$t" "${FAILED[$t]}"
        return 0
    fi
    pid=$STARTED_PID
    url="rest:http://$USER_NAME:$USER_PASSWORD@127.0.0.1:${PORT[$t]}/$USER_NAME/repo/"
    local r=("${RESTIC[@]}" -r "$url" --cache-dir "$cache")
    step "$t" "$pid" "$k.init" "${r[@]}" init || { FAILED[$t]="restic init failed"; return 0; }
    step "$t" "$pid" "$k.backup" "${r[@]}" backup --host bench "$DATA" || { FAILED[$t]="restic backup failed"; return 0; }
    printf '  %-18s backup  %8s s  %7s MiB/s  server CPU %7s s (%4s of core %s)  client core %s busy %s\n' "$t" \
        "${SECS[$k.backup]}" "${MIBS[$k.backup]}" "${CPU[$k.backup]}" "${CPUPCT[$k.backup]}" "$SERVER_CPU" \
        "$CLIENT_CPU" "${CLIENT[$k.backup]}"
    REPO_BYTES[$t]=$(disk_bytes "${STORE[$t]}")
    step "$t" "$pid" "$k.restore" "${r[@]}" restore latest --target "$target" || { FAILED[$t]="restic restore failed"; return 0; }
    printf '  %-18s restore %8s s  %7s MiB/s  server CPU %7s s (%4s of core %s)  client core %s busy %s\n' "$t" \
        "${SECS[$k.restore]}" "${MIBS[$k.restore]}" "${CPU[$k.restore]}" "${CPUPCT[$k.restore]}" "$SERVER_CPU" \
        "$CLIENT_CPU" "${CLIENT[$k.restore]}"
    # restic restores the absolute path under the target
    if run diff -r -q "$DATA" "$target$DATA" >"$TMP/$t.diff" 2>&1; then
        RESTORED[$t]=identical
    else
        RESTORED[$t]="DIFFERS ($(wc -l <"$TMP/$t.diff") lines of diff -r -q)"
        FAILED[$t.restore]="the restored tree differs from the data: $(head -n 3 "$TMP/$t.diff" | tr '\n' ' ')"
    fi
    rm -rf "$target"
    step "$t" "$pid" "$k.check" "${r[@]}" check || { FAILED[$t]="restic check failed"; return 0; }
    printf '  %-18s check   %8s s                server CPU %7s s; restore %s; repository %s\n' "$t" \
        "${SECS[$k.check]}" "${CPU[$k.check]}" "${RESTORED[$t]}" "$(human "${REPO_BYTES[$t]}")"
    stop_pid "$pid"
    forget_pid "$pid"
    # the next server's run gets the disk (and the page cache) to itself
    rm -rf "${STORE[$t]}" "$cache"
    sync
}

# ---------------------------------------------------------------- run
printf '\n== backup server: %s, each pinned to core %s; restic %s on core %s; %s round(s) ==\n' \
    "${TARGETS[*]}" "$SERVER_CPU" "$RESTIC_VERSION" "$CLIENT_CPU" "$ROUNDS"
printf 'files: %s files, %s bytes (%s) from bench/backup/dataset.py %s MiB, seed %s\n' \
    "$DATA_FILES" "$DATA_BYTES" "$(human "$DATA_BYTES")" "$DATA_MIB" "$SEED"
printf 'all: HTTP basic auth (htpasswd, one {SHA} user), private repositories, no append-only, plain HTTP\n'
for ((round = 1; round <= ROUNDS; round++)); do
    order=("${TARGETS[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[i]}"); done
    fi
    printf 'round %s: %s\n' "$round" "${order[*]}"
    for t in "${order[@]}"; do
        [[ -z ${FAILED[$t]:-} ]] || continue
        measure "$t" "$round"
        ((round > 1)) || [[ -z ${CMDLINE[$t]:-} ]] || printf '  %-18s (%s)\n' "" "${CMDLINE[$t]}"
    done
done

# ---------------------------------------------------------------- summary
# mean FIELD SERVER STEP: the mean over the rounds of FIELD (SECS, CPU, CLIENT)
# of that step; "spread" the same as [min-max].
values() { local -n field=$1; local n; for ((n = 1; n <= ROUNDS; n++)); do echo "${field[$2.$n.$3]:-}"; done; }
mean() { values "$@" | tr -d '%' | awk 'NF { s += $1; n++ } END { if (n) printf "%.3f", s / n }'; }
spread() {
    values "$@" | tr -d '%' | awk 'NF { if (n == 0 || $1 < lo) lo = $1; if (n == 0 || $1 > hi) hi = $1; n++ }
        END { if (n) printf "[%g-%g]", lo, hi }'
}
mibs() { awk -v b="$DATA_BYTES" -v s="$1" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s }'; }
pct() { awk -v c="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f%%", c / s * 100 }'; }
complete() { local n; for ((n = 1; n <= ROUNDS; n++)); do [[ -n ${SECS[$1.$n.check]:-} ]] || return 1; done; }
table() {
    local t b r c
    printf '  %-18s %8s %9s %8s %6s  %9s %8s %8s %6s  %8s %8s  %10s\n' server "backup s" "MiB/s" "srv CPU" "srv %" \
        "restore s" "MiB/s" "srv CPU" "srv %" "check s" "srv CPU" "repository"
    for t in "${TARGETS[@]}"; do
        if ! complete "$t"; then
            printf '  %-18s FAILED: %s\n' "$t" "${FAILED[$t]:-?}"
            continue
        fi
        b=$(mean SECS "$t" backup) r=$(mean SECS "$t" restore)
        printf '  %-18s %8.3f %9s %8.2f %6s  %9.3f %8s %8.2f %6s  %8.3f %8.2f  %10s\n' "$t" \
            "$b" "$(mibs "$b")" "$(mean CPU "$t" backup)" "$(pct "$(mean CPU "$t" backup)" "$b")" \
            "$r" "$(mibs "$r")" "$(mean CPU "$t" restore)" "$(pct "$(mean CPU "$t" restore)" "$r")" \
            "$(mean SECS "$t" check)" "$(mean CPU "$t" check)" "$(human "${REPO_BYTES[$t]}")"
    done
    if ((ROUNDS > 1)); then
        echo "  spread over the rounds [min-max]:"
        for t in "${TARGETS[@]}"; do
            complete "$t" || continue
            printf '  %-18s backup %s s, server CPU %s s; restore %s s, server CPU %s s\n' "$t" \
                "$(spread SECS "$t" backup)" "$(spread CPU "$t" backup)" "$(spread SECS "$t" restore)" \
                "$(spread CPU "$t" restore)"
        done
    fi
    for c in gatehouse gatehouse-noverify; do
        if has "$c" && has rclone && complete "$c" && complete rclone; then
            # MiB/s ratio = the inverse of the wall-time ratio
            printf '  ratio %s/rclone: backup MiB/s %s, server CPU %s; restore MiB/s %s, server CPU %s\n' "$c" \
                "$(ratio "$(mean SECS rclone backup)" "$(mean SECS "$c" backup)")" \
                "$(ratio "$(mean CPU "$c" backup)" "$(mean CPU rclone backup)")" \
                "$(ratio "$(mean SECS rclone restore)" "$(mean SECS "$c" restore)")" \
                "$(ratio "$(mean CPU "$c" restore)" "$(mean CPU rclone restore)")"
        fi
    done
    printf '  client core busy (backup/restore, mean):'
    for t in "${TARGETS[@]}"; do
        complete "$t" && printf ' %s %.0f%%/%.0f%%' "$t" "$(mean CLIENT "$t" backup)" "$(mean CLIENT "$t" restore)"
    done
    echo
}
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | head -c1)
[[ -n $dirty ]] && dirty=" (working tree has uncommitted changes)"
summary=$(cat <<EOF

==== backup summary ====
servers on core $SERVER_CPU, restic on core $CLIENT_CPU: $DATA_FILES files, $DATA_BYTES bytes ($(human "$DATA_BYTES")); means of $ROUNDS round(s), the order reversed every other round; MiB/s = data bytes / wall time of the restic command; srv CPU = server utime + stime (s), srv % = of its core
$(table)
$(for k in "${!FAILED[@]}"; do echo "  FAILED $k: ${FAILED[$k]}"; done)
$(if ((${#DISTURBED[@]})); then echo "  disturbed (other load on the server core):"; printf '    %s\n' "${DISTURBED[@]}"; fi)
machine: $ncpu CPU ($cpu), kernel $(uname -r), restic $RESTIC_VERSION, rclone ${RCLONE_VERSION:-not run}, $(df -h --output=fstype "$TMP" | tail -n1 | tr -d ' ') in $TMPDIR_BASE, restores to $(df -h --output=fstype "$RESTORES" | tail -n1 | tr -d ' ') in $RESTORE_BASE
gatehouse $rev$dirty; bench/backup.sh$( ((QUICK)) && echo " --quick") took $(($(date +%s) - STARTED))s
EOF
)
echo
grep -v '^$' <<<"$summary"

((${#FAILED[@]} == 0)) || exit 1
