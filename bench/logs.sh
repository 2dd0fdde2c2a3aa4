#!/usr/bin/env bash
# bench/logs.sh: the log server, `gatehouse serve` with a [log_server] section
# against syslog-ng writing one file per host, on loopback, in one run, with the
# same messages.
#
# Both servers run pinned to the same core (SERVER_CPU); loggen (syslog-ng's own
# load generator) and every other client run on another core (CLIENT_CPU).
#
# 1. Ingest. loggen sends MESSAGES syslog lines over CONNECTIONS TCP connections
#    (one loggen process each, each with its own lines) as fast as the server
#    takes them, to syslog-ng (`network()` TCP source,
#    default parsing, `file("DIR/${HOST}/messages")`), then to gatehouse
#    (`[log_server] tcp`, rate_limit = 0). The lines are nginx access-log lines of
#    a web farm (bench/logs/corpus.py: about 220 bytes, RFC 3164, about 7:1 with
#    zstd). Halfway through, NEEDLES lines containing a rare word
#    (xyzzy-needle-42) go in with `logger --tcp`. What counts is what each server
#    STORED (syslog-ng: lines in its files; gatehouse: its /logs/stats), not what
#    loggen sent: rate = stored / (from loggen's start to the last stored line).
#    Also per server: CPU seconds (utime + stime from /proc/PID/stat), CPU µs per
#    stored message, bytes on disk (du) of what it wrote. Before that, the same
#    load for both: FIXED_RATE msg/s for FIXED_SECONDS s, and the CPU it costs
#    (loggen on one core cannot saturate a server that needs less CPU than it).
# 2. Search. The time to find the rare word in everything stored, page cache
#    warm (each command run once first), median of RUNS runs: `gatehouse logs
#    --grep` against `grep -r` over syslog-ng's files and `zstdgrep` over zstd
#    copies of them (what a compressed-at-rest syslog-ng setup would pay). Every
#    command must find exactly the NEEDLES lines, or the run fails.
#
# How to read it: msg/s above, ratio gatehouse/syslog-ng above 1 = gatehouse
# stores faster; search ratio gatehouse/grep below 1 = gatehouse finds faster.
# "server CPU" near 100% of its core means the server was the limit; well below
# it, loggen (see "client core busy") was, and the same-load CPU is the figure to
# compare. See bench/README.md.
#
#   bench/logs.sh --quick      # smoke run: 200k messages, 3 search runs, under a minute
#   bench/logs.sh              # full run: 1M + 4.8M messages (about 1.2 GB of text per store)
#
# No root needed once syslog-ng is cached: it is never installed (Debian's
# syslog-ng-core conflicts with rsyslog), but `apt-get download`ed into
# bench/.cache/ and unpacked there; its few libraries are installed with apt
# (root) if missing. Everything started is stopped by pid when the script exits
# (also on Ctrl-C or error) and the temp dir is removed; bench/.cache stays.
# shellcheck disable=SC2317 # cleanup is called by the trap
set -euo pipefail

die() { echo "logs: error: $*" >&2; exit 1; }
say() { echo "logs: $*"; }

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
if ((QUICK)); then
    d_messages=200000 d_distinct=50000 d_runs=3 d_fixed=5
else
    d_messages=4800000 d_distinct=400000 d_runs=5 d_fixed=20
fi

MESSAGES=${MESSAGES:-$d_messages}         # loggen messages in all (split evenly over the connections)
CONNECTIONS=${CONNECTIONS:-4}             # TCP connections (loggen processes) sending at once
DISTINCT=${DISTINCT:-$d_distinct}         # distinct lines per connection (each loggen loops over its own file)
NEEDLES=${NEEDLES:-5}                     # lines with the rare word, sent halfway through
RUNS=${RUNS:-$d_runs}                     # timed runs per search command (median reported)
SETTLE=${SETTLE:-3}                       # seconds without a new stored line that end an ingest
FIXED_RATE=${FIXED_RATE:-50000}           # messages/s in all for the same-load run (0: skip it)
FIXED_SECONDS=${FIXED_SECONDS:-$d_fixed}  # its length in seconds
SERVER_CPU=${SERVER_CPU:-0}               # the core both servers are pinned to
CLIENT_CPU=${CLIENT_CPU:-1}               # the core of loggen, logger and the search commands
SERVERS=${SERVERS:-syslog-ng gatehouse}   # which servers to measure (either or both)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$ROOT/bench/.cache
SNG_ROOT=$CACHE/syslog-ng-core # the unpacked package
NEEDLE=xyzzy-needle-42
STARTED=$(date +%s)

for v in MESSAGES CONNECTIONS DISTINCT NEEDLES RUNS SETTLE FIXED_RATE FIXED_SECONDS SERVER_CPU CLIENT_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((CONNECTIONS >= 1 && MESSAGES >= CONNECTIONS && DISTINCT >= 1 && NEEDLES >= 1 && RUNS >= 1 && SETTLE >= 1 &&
    FIXED_SECONDS >= 1)) ||
    die "need CONNECTIONS, DISTINCT, NEEDLES, RUNS, SETTLE, FIXED_SECONDS >= 1 and MESSAGES >= CONNECTIONS"
((SERVER_CPU != CLIENT_CPU)) || die "SERVER_CPU and CLIENT_CPU must be different cores"
PER_CONN=$((MESSAGES / CONNECTIONS)) # loggen --number is per connection
SENT=$((PER_CONN * CONNECTIONS))
read -r -a TARGETS <<<"$SERVERS"
((${#TARGETS[@]} >= 1)) || die "SERVERS is empty (pick from: syslog-ng gatehouse)"
for t in "${TARGETS[@]}"; do
    [[ $t =~ ^(syslog-ng|gatehouse)$ ]] || die "SERVERS: unknown server '$t' (pick from: syslog-ng gatehouse)"
done
has() { [[ " ${TARGETS[*]} " = *" $1 "* ]]; }

# ---------------------------------------------------------------- tools
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)"); }
need python3 python3
need taskset util-linux
need curl curl
need logger bsdutils
need zstd zstd
need zstdgrep zstd
need getconf libc-bin
need dpkg-deb dpkg
need apt-get apt
need ldd libc-bin
has gatehouse && [[ -z ${GATEHOUSE_BIN:-} ]] && need cargo "cargo (or rustup)"
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
ncpu=$(nproc --all)
((SERVER_CPU < ncpu && CLIENT_CPU < ncpu)) ||
    die "this machine has $ncpu CPUs; the benchmark needs cores $SERVER_CPU and $CLIENT_CPU (set SERVER_CPU, CLIENT_CPU)"
taskset -c "$SERVER_CPU" true 2>/dev/null || die "cannot pin to core $SERVER_CPU (not in this process's CPU set?)"
taskset -c "$CLIENT_CPU" true 2>/dev/null || die "cannot pin to core $CLIENT_CPU (not in this process's CPU set?)"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d /tmp/gatehouse-logs-bench.XXXXXX)
# shellcheck source=bench/lib/processes.sh
source "$ROOT/bench/lib/processes.sh"

# ---------------------------------------------------------------- syslog-ng (and loggen), unpacked in bench/.cache
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
    [[ -z $ours ]] || rm -f "$ours"
    ((rc == 0)) || { tail -n 20 "$TMP/apt.log" >&2; die "apt-get install $* failed (output above)"; }
}

if [[ ! -x $SNG_ROOT/usr/sbin/syslog-ng || ! -x $SNG_ROOT/usr/bin/loggen ]]; then
    say "fetching syslog-ng-core into $CACHE (apt-get download; it is not installed: it conflicts with rsyslog)"
    mkdir -p "$CACHE"
    rm -f "$CACHE"/syslog-ng-core_*.deb
    if ! (cd "$CACHE" && apt-get download syslog-ng-core) >"$TMP/download.log" 2>&1; then
        ((EUID == 0)) || { cat "$TMP/download.log" >&2; die "apt-get download syslog-ng-core failed (output above)"; }
        apt-get update -qq >"$TMP/apt-update.log" 2>&1 || true
        (cd "$CACHE" && apt-get download syslog-ng-core) >"$TMP/download.log" 2>&1 ||
            { cat "$TMP/download.log" >&2; die "apt-get download syslog-ng-core failed (output above)"; }
    fi
    rm -rf "$SNG_ROOT.part"
    dpkg-deb -x "$CACHE"/syslog-ng-core_*.deb "$SNG_ROOT.part" || die "dpkg-deb -x of $(echo "$CACHE"/syslog-ng-core_*.deb) failed"
    rm -rf "$SNG_ROOT"
    mv "$SNG_ROOT.part" "$SNG_ROOT"
fi
SNG_LIBS=$SNG_ROOT/usr/lib/syslog-ng # libsyslog-ng-X.so and loggen's libraries
SNG_MODULES=$(find "$SNG_LIBS" -mindepth 1 -maxdepth 1 -type d -name '[0-9]*.[0-9]*' | sort -V | tail -n1)
[[ -n $SNG_MODULES && -e $SNG_MODULES/libaffile.so ]] || die "no syslog-ng module dir in $SNG_LIBS (remove $CACHE and rerun)"
[[ -d $SNG_MODULES/loggen ]] || die "no loggen plugin dir in $SNG_MODULES (remove $CACHE and rerun)"
SNG_BIN=$SNG_ROOT/usr/sbin/syslog-ng
LOGGEN_BIN=$SNG_ROOT/usr/bin/loggen
# The system libraries the unpacked programs and modules need: the package's
# Depends (libivykis0, libnet1, ...), installed when any is missing.
unresolved() {
    local f
    for f in "$SNG_BIN" "$LOGGEN_BIN" "$SNG_MODULES"/*.so "$SNG_MODULES"/loggen/*.so; do
        LD_LIBRARY_PATH=$SNG_LIBS ldd "$f" 2>/dev/null | awk '/not found/ { print $1 }'
    done | sort -u
}
if [[ -n $(unresolved) ]]; then
    deb=$(find "$CACHE" -maxdepth 1 -name 'syslog-ng-core_*.deb' | head -n1)
    [[ -n $deb ]] || die "syslog-ng needs $(unresolved | tr '\n' ' ')and the .deb to read its Depends is gone (remove $SNG_ROOT and rerun)"
    # "libc6 (>= 2.34), ..., sysvinit-utils (>= 3.05-4~) | lsb-base": the first alternative of each, no versions.
    mapfile -t deps < <(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' | grep .)
    apt_install "${deps[@]}"
    [[ -z $(unresolved) ]] || die "syslog-ng still misses libraries: $(unresolved | tr '\n' ' ')"
fi
env LD_LIBRARY_PATH="$SNG_LIBS" "$SNG_BIN" --version >"$TMP/sng-version.txt" 2>&1 || { cat "$TMP/sng-version.txt" >&2; die "$SNG_BIN does not run"; }
SNG_VERSION=$(awk '/^Installer-Version:/ { print $2 }' "$TMP/sng-version.txt")
SNG_CONFIG_VERSION=${SNG_VERSION%.*} # 3.38.1 -> 3.38
# loggen finds its transport plugins in $SYSLOGNG_PREFIX/lib/syslog-ng/X.Y/loggen.
LOGGEN=(env LD_LIBRARY_PATH="$SNG_LIBS" SYSLOGNG_PREFIX="$SNG_ROOT/usr" taskset -c "$CLIENT_CPU" "$LOGGEN_BIN")
"${LOGGEN[@]}" --help-all >"$TMP/loggen-help.txt" 2>&1 || true
grep -q -- '--active-connections' "$TMP/loggen-help.txt" || loggen_broken=1
grep -q -- '--stream' "$TMP/loggen-help.txt" || loggen_broken=1
[[ -z ${loggen_broken:-} ]] ||
    { cat "$TMP/loggen-help.txt" >&2; die "loggen has no socket plugin (output above)"; }

# ---------------------------------------------------------------- gatehouse binary
GH_PROBLEM= # why gatehouse cannot be measured, if it cannot
has gatehouse && find_gatehouse logs logs "the log server"

# ---------------------------------------------------------------- the messages
# One file per connection: loggen reads its file from the start on every
# connection, so one shared file would send every line CONNECTIONS times at once.
say "writing $CONNECTIONS x $DISTINCT distinct messages (bench/logs/corpus.py)"
end=$(date +%s)
cpids=()
for ((c = 1; c <= CONNECTIONS; c++)); do
    python3 "$ROOT/bench/logs/corpus.py" "$DISTINCT" "$end" "$c" >"$TMP/corpus-$c.txt" &
    cpids+=("$!")
    PIDS+=("$!")
done
for p in "${cpids[@]}"; do
    wait "$p" || die "bench/logs/corpus.py failed"
    forget_pid "$p"
done
CORPUS_AVG=$(cat "$TMP"/corpus-*.txt | awk '{ n += length($0) + 1 } END { printf "%.0f", n / NR }')

# From here on, this script and everything it starts without a taskset of its
# own (the polling, zstd, logger) run on the client core, off the servers' core.
taskset -p -c "$CLIENT_CPU" $$ >/dev/null || die "cannot pin this script to core $CLIENT_CPU"
RAW_BYTES=$((SENT * CORPUS_AVG)) # about what loggen sends

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
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.3f", b - a }'; }
human() { numfmt --to=iec --suffix=B --format='%.1f' "$1" 2>/dev/null || echo "${1}B"; }
disk_bytes() { du -s --block-size=1 "$1" | awk '{ print $1 }'; }                   # allocated
apparent_bytes() { du -s --block-size=1 --apparent-size "$1" | awk '{ print $1 }'; } # file sizes
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Sends the NEEDLES lines with the rare word to port $1 (RFC 3164 over TCP, LF framing).
inject() {
    local i
    for ((i = 1; i <= NEEDLES; i++)); do
        echo "needle $i of $NEEDLES: \"GET /search?q=$NEEDLE HTTP/1.1\" 200 512"
    done | taskset -c "$CLIENT_CPU" logger --tcp -n 127.0.0.1 -P "$1" --rfc3164 -t bench-needle ||
        die "logger --tcp to 127.0.0.1:$1 failed"
}

# Waits until 127.0.0.1:$1 accepts TCP connections while process $2 lives ($3 names it, $4 is its log).
wait_port() {
    local port=$1 pid=$2 name=$3 log=$4 i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { echo "logs: $name exited while starting; its log:" >&2; tail -n 20 "$log" >&2; return 1; }
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "logs: $name does not accept connections on 127.0.0.1:$port after 10 s; its log:" >&2
    tail -n 20 "$log" >&2
    return 1
}

# ---------------------------------------------------------------- servers
# start_* write the config to $TMP, start the server on SERVER_CPU and wait for
# it; they set STARTED_PID and STORE (the directory it writes to).
STARTED_PID=
declare -A STORE PORT

SNG_PORT=$(free_port)
start_syslog-ng() {
    local dir=$TMP/syslog-ng
    mkdir -p "$dir/logs"
    cat >"$dir/syslog-ng.conf" <<EOF
@version: $SNG_CONFIG_VERSION
# written by bench/logs.sh: one TCP source, one file per sending host, syslog-ng's
# defaults otherwise (parsing, flow, flushing); no DNS lookups for the host name.
options { use-dns(no); create-dirs(yes); stats-freq(0); };
source s_net { network(ip("127.0.0.1") port($SNG_PORT) transport("tcp")); };
destination d_hosts { file("$dir/logs/\${HOST}/messages"); };
log { source(s_net); destination(d_hosts); };
EOF
    SNG_CMD=(taskset -c "$SERVER_CPU" "$SNG_BIN" -F --no-caps "--module-path=$SNG_MODULES" "--cfgfile=$dir/syslog-ng.conf"
        "--persist-file=$dir/syslog-ng.persist" "--pidfile=$dir/syslog-ng.pid" "--control=$dir/syslog-ng.ctl")
    env LD_LIBRARY_PATH="$SNG_LIBS" "${SNG_CMD[@]}" >"$dir/stderr.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$SNG_PORT" "$pid" syslog-ng "$dir/stderr.log" || return 1
    STARTED_PID=$pid
    STORE[syslog-ng]=$dir/logs
    PORT[syslog-ng]=$SNG_PORT
}

GH_PORT=$(free_port)
GH_ADMIN=$(free_port)
GH_CONF=$TMP/gatehouse/gatehouse.toml
start_gatehouse() {
    local dir=$TMP/gatehouse
    [[ -z $GH_PROBLEM ]] || return 1
    mkdir -p "$dir"
    cat >"$GH_CONF" <<EOF
# written by bench/logs.sh
[log_server]
tcp = "127.0.0.1:$GH_PORT"
dir = "$dir/store"
rate_limit = 0          # off for the benchmark (syslog-ng has none)

[admin]
listen = "127.0.0.1:$GH_ADMIN"
EOF
    if ! "$GH" check -c "$GH_CONF" >"$dir/check.log" 2>&1; then
        cat "$dir/check.log" >&2
        GH_PROBLEM="gatehouse check refuses a config with [log_server] and [admin] (output above)"
        return 1
    fi
    taskset -c "$SERVER_CPU" "$GH" serve -c "$GH_CONF" >"$dir/stderr.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$GH_PORT" "$pid" "gatehouse serve" "$dir/stderr.log" || return 1
    wait_port "$GH_ADMIN" "$pid" "gatehouse serve (admin)" "$dir/stderr.log" || return 1
    STARTED_PID=$pid
    STORE[gatehouse]=$dir/store
    PORT[gatehouse]=$GH_PORT
}

# What each server has stored: progress_* is cheap and only has to change when
# more is stored (polled every 0.2 s); stored_* is the line count.
progress_syslog-ng() { find "${STORE[syslog-ng]}" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
stored_syslog-ng() { find "${STORE[syslog-ng]}" -type f -exec cat {} + | wc -l; }
# gatehouse: /logs/stats on the admin port (or `gatehouse logs --stats --json`,
# the same JSON), {"hosts": [{"host": .., "lines": N, "received": N, "shed": N,
# ...}, ..]}, summed over the hosts: "lines received shed throttled unparsed
# truncated disk_bytes".
gh_stats() {
    local json
    json=$(curl -sf --noproxy '*' --max-time 5 "http://127.0.0.1:$GH_ADMIN/logs/stats" 2>/dev/null) ||
        json=$("$GH" logs -c "$GH_CONF" --stats --json 2>/dev/null) || json='{}'
    python3 -c '
import json, sys
keys = ["lines", "received", "shed", "throttled", "unparsed", "truncated", "disk_bytes"]
try:
    hosts = json.loads(sys.argv[1]).get("hosts") or []
except ValueError:
    hosts = []
print(" ".join(str(sum(int(h.get(k) or 0) for h in hosts)) for k in keys))' "$json"
}
stored_gatehouse() { gh_stats | awk '{ print $1 }'; }
progress_gatehouse() { stored_gatehouse; }

# ---------------------------------------------------------------- 1. ingest
# ingest NAME PID KEY RATE: loggen to the server, then waits until nothing new is
# stored for SETTLE seconds. RATE 0: SENT messages as fast as the server takes
# them, the needles halfway. RATE > 0: that many messages per second in all for
# FIXED_SECONDS, no needles. Sets the I_* figures of KEY.
DISTURBED=() # ingests during which something else ran on the server core
declare -A I_STORED I_SECS I_RATE I_CPU I_CPUPCT I_US I_LOGGEN I_LOGGEN_COUNT I_CLIENT I_SBUSY I_SENT
# The arguments of loggen number $2 for port $1, $3 messages at $4 a second: one
# connection, its own file (sent as is: --dont-parse), looped; --number ends it
# (its --interval, 10 s by default, must not: 3600 s).
loggen_args() {
    echo --inet --stream --active-connections 1 --rate "$4" --number "$3" --interval 3600 \
        --read-file "$TMP/corpus-$2.txt" --dont-parse --loop-reading 127.0.0.1 "$1"
}
# Sum over loggen outputs $@ of the last "count=N" (printed every second).
loggen_progress() { awk -F'[=,]' 'FNR == 1 { s += n; n = 0 } /^count=/ { n = $2 } END { print s + n }' "$@"; }
ingest() {
    local name=$1 pid=$2 key=$3 rate=$4 port=${PORT[$1]} c lpids=() outs=() c0 c1 s0 s1 t0 tend tlast prev v quiet=0
    local injected=0 rc=0 args p running other cend per_conn conn_rate sent before
    if ((rate > 0)); then
        conn_rate=$(((rate + CONNECTIONS - 1) / CONNECTIONS))
        per_conn=$((conn_rate * FIXED_SECONDS))
        injected=1 # no needles
    else
        conn_rate=10000000 # far above what a server takes: as fast as TCP lets it
        per_conn=$PER_CONN
    fi
    sent=$((per_conn * CONNECTIONS))
    before=$("stored_$name")
    # The previous run's writes are written back now, not by the kernel's
    # flusher threads 30 s into this measurement (on any core, the server's too).
    sync
    c0=$(cpu_ticks "$pid")
    s0=$(cores_snapshot)
    t0=$(now)
    for ((c = 1; c <= CONNECTIONS; c++)); do
        read -r -a args <<<"$(loggen_args "$port" "$c" "$per_conn" "$conn_rate")"
        outs+=("$TMP/loggen-$key-$c.txt")
        "${LOGGEN[@]}" "${args[@]}" >"$TMP/loggen-$key-$c.txt" 2>&1 &
        lpids+=("$!")
        PIDS+=("$!")
    done
    while :; do
        running=0
        for p in "${lpids[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
        ((running)) || break
        if ((!injected)) && (($(loggen_progress "${outs[@]}") >= sent / 2)); then
            inject "$port"
            injected=1
        fi
        sleep 0.2
    done
    for p in "${lpids[@]}"; do
        wait "$p" || rc=$?
        forget_pid "$p"
    done
    tend=$(now)
    s1=$(cores_snapshot)
    cend=$(cpu_ticks "$pid")
    ((rc == 0)) || { tail -n 5 "${outs[@]}" >&2; echo "logs: loggen against $name failed (output above)" >&2; return 1; }
    # (a short run can end before loggen reports half: the needles then come last)
    ((injected)) || inject "$port"
    ((rate > 0)) || sent=$((sent + NEEDLES))
    # The last stored line: the last change seen, or loggen's end if the server kept up.
    tlast=$tend
    prev=$("progress_$name")
    while ((quiet < SETTLE * 5)); do
        sleep 0.2
        v=$("progress_$name")
        if [[ $v != "$prev" ]]; then
            prev=$v
            tlast=$(now)
            quiet=0
        else
            quiet=$((quiet + 1))
        fi
    done
    kill -0 "$pid" 2>/dev/null || { echo "logs: $name died during the ingest" >&2; return 1; }
    c1=$(cpu_ticks "$pid")
    I_SENT[$key]=$sent
    I_STORED[$key]=$(($("stored_$name") - before))
    if [[ $name = gatehouse ]]; then
        read -r _ GH_RECEIVED GH_SHED GH_THROTTLED GH_UNPARSED GH_TRUNCATED _ < <(gh_stats)
    fi
    I_SECS[$key]=$(since "$t0" "$tlast")
    I_RATE[$key]=$(awk -v n="${I_STORED[$key]}" -v s="${I_SECS[$key]}" 'BEGIN { printf "%.0f", n / s }')
    I_CPU[$key]=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }')
    I_CPUPCT[$key]=$(awk -v c="${I_CPU[$key]}" -v s="${I_SECS[$key]}" 'BEGIN { printf "%.0f%%", c / s * 100 }')
    I_US[$key]=$(awk -v c="${I_CPU[$key]}" -v n="${I_STORED[$key]}" 'BEGIN { if (n > 0) printf "%.2f", c * 1e6 / n; else print "-" }')
    I_CLIENT[$key]=$(core_busy "$s0" "$s1" "$CLIENT_CPU")
    I_SBUSY[$key]=$(core_busy "$s0" "$s1" "$SERVER_CPU")
    # loggen's time: what else ran on the server core then (a build, another benchmark)
    other=$(awk -v b="${I_SBUSY[$key]}" -v c=$((cend - c0)) -v hz="$CLK_TCK" -v s="$(since "$t0" "$tend")" \
        'BEGIN { sub(/%/, "", b); printf "%.0f", b - c / hz / s * 100 }')
    # "average rate = 110420.00 msg/sec, count=1000000, time=9.05633, (average) msg size=218, ...", summed
    I_LOGGEN[$key]=$(awk '/^average rate/ { s += $4 } END { printf "%.0f", s }' "${outs[@]}")
    I_LOGGEN_COUNT[$key]=$(awk -F'count=' '/^average rate/ { split($2, a, ","); s += a[1] } END { print s + 0 }' "${outs[@]}")
    printf '  %-10s stored %9s of %s sent in %7s s = %7s msg/s  (loggen: %s msg/s, count %s)\n' "$name" \
        "${I_STORED[$key]}" "$sent" "${I_SECS[$key]}" "${I_RATE[$key]}" "${I_LOGGEN[$key]:-?}" \
        "${I_LOGGEN_COUNT[$key]:-?}"
    printf '  %-10s server CPU %s s (%s of core %s) = %s µs/msg; while loggen ran: core %s busy %s, client core %s busy %s\n' \
        "" "${I_CPU[$key]}" "${I_CPUPCT[$key]}" "$SERVER_CPU" "${I_US[$key]}" "$SERVER_CPU" "${I_SBUSY[$key]}" \
        "$CLIENT_CPU" "${I_CLIENT[$key]}"
    if [[ $name = gatehouse ]]; then
        printf '  %-10s its /logs/stats (since it started): received %s, shed %s, throttled %s, unparsed %s, truncated %s\n' "" \
            "$GH_RECEIVED" "$GH_SHED" "$GH_THROTTLED" "$GH_UNPARSED" "$GH_TRUNCATED"
    fi
    if ((other > 15)); then
        echo "  warning: something else had ${other}% of core $SERVER_CPU while loggen ran (another program, or the kernel writing back dirty pages); the $name figures are disturbed"
        DISTURBED+=("$key: ${other}% of core $SERVER_CPU")
    fi
    if [[ ${I_LOGGEN_COUNT[$key]:-} != "$((per_conn * CONNECTIONS))" ]]; then
        echo "  !!!! loggen reports ${I_LOGGEN_COUNT[$key]:-no} messages sent to $name, not $((per_conn * CONNECTIONS)) !!!!"
    fi
    if [[ ${I_STORED[$key]} != "$sent" ]]; then
        echo "  !!!! $name stored ${I_STORED[$key]} lines, not the $sent sent: it lost (or split) some !!!!"
    fi
}

# ---------------------------------------------------------------- 2. search
# search KEY LABEL CMD...: CMD once to warm the page cache, then RUNS timed runs
# (its output to a file, the matches counted after). Sets S_MED, S_RANGE, S_COUNT.
declare -A S_MED S_RANGE S_COUNT S_LABEL
search() {
    local key=$1 label=$2 out=$TMP/search-$1.txt i t0 rc times=() counts=()
    shift 2
    for ((i = 0; i <= RUNS; i++)); do
        rc=0
        t0=$(now)
        run taskset -c "$CLIENT_CPU" "$@" >"$out" 2>"$out.err" || rc=$?
        # grep and zstdgrep exit 1 when nothing matched: the count below says so
        ((rc <= 1)) || { cat "$out.err" >&2; echo "logs: '$*' failed with status $rc (output above)" >&2; return 1; }
        ((i == 0)) || times+=("$(since "$t0")")
        counts+=("$(grep -c -- "$NEEDLE" "$out" || true)")
    done
    S_LABEL[$key]=$label
    S_MED[$key]=$(printf '%s\n' "${times[@]}" | median)
    S_RANGE[$key]="$(printf '%s\n' "${times[@]}" | sort -g | head -n1)-$(printf '%s\n' "${times[@]}" | sort -g | tail -n1)"
    S_COUNT[$key]=$(printf '%s\n' "${counts[@]}" | sort -u | paste -sd/)
    printf '  %-52s %8s s [%s]  %s lines\n' "$label" "${S_MED[$key]}" "${S_RANGE[$key]}" "${S_COUNT[$key]}"
}

# ---------------------------------------------------------------- run
printf '\n== log server: %s, each pinned to core %s; loggen, logger and the searches on core %s ==\n' \
    "${TARGETS[*]}" "$SERVER_CPU" "$CLIENT_CPU"
printf 'messages: nginx access-log lines (bench/logs/corpus.py, RFC 3164, %s bytes on average), %s distinct per connection;\n' \
    "$CORPUS_AVG" "$DISTINCT"
printf '  %s x loggen %s\n' "$CONNECTIONS" "$(loggen_args PORT N | sed "s|$TMP/|TMP/|")"
printf '  = %s messages (about %s of text) over %s connections, plus %s lines with "%s" halfway (logger --tcp --rfc3164)\n' \
    "$SENT" "$(human "$RAW_BYTES")" "$CONNECTIONS" "$NEEDLES" "$NEEDLE"
printf 'syslog-ng %s (Debian syslog-ng-core, unpacked in bench/.cache): network() TCP source, file("DIR/%s/messages"), use-dns(no), defaults otherwise\n' \
    "$SNG_VERSION" "\${HOST}"
printf 'gatehouse serve: [log_server] tcp, dir, rate_limit = 0; [admin] listen\n'

declare -A FAILED=() SPID=()
printf '\n1. ingest (rate = stored lines / time from loggen'"'"'s start to the last stored line)\n'
if ((FIXED_RATE > 0)); then
    printf '   first the same load for both: %s msg/s for %s s (what it costs), then as fast as they take it (the needles halfway):\n' \
        "$FIXED_RATE" "$FIXED_SECONDS"
fi
for t in "${TARGETS[@]}"; do
    if ! "start_$t"; then
        FAILED[$t]="did not start"
        [[ $t = gatehouse && -n $GH_PROBLEM ]] && FAILED[$t]=$GH_PROBLEM
        printf '  %-10s FAILED: %s\n' "$t" "${FAILED[$t]}"
        continue
    fi
    SPID[$t]=$STARTED_PID
    if ((FIXED_RATE > 0)); then
        printf '  -- %s msg/s:\n' "$FIXED_RATE"
        ingest "$t" "${SPID[$t]}" "$t@fixed" "$FIXED_RATE" || { FAILED[$t]="same-load ingest failed (see above)"; continue; }
        printf '  -- as fast as it takes them:\n'
    fi
    ingest "$t" "${SPID[$t]}" "$t" 0 || { FAILED[$t]="ingest failed (see above)"; continue; }
done
if [[ -n ${I_RATE[syslog-ng]:-} && -n ${I_RATE[gatehouse]:-} ]]; then
    printf '  ratio gatehouse/syslog-ng: msg/s %s, CPU per message %s' \
        "$(ratio "${I_RATE[gatehouse]}" "${I_RATE[syslog-ng]}")" "$(ratio "${I_US[gatehouse]}" "${I_US[syslog-ng]}")"
    if [[ -n ${I_US[syslog-ng@fixed]:-} && -n ${I_US[gatehouse@fixed]:-} ]]; then
        printf '; at %s msg/s: CPU per message %s' "$FIXED_RATE" "$(ratio "${I_US[gatehouse@fixed]}" "${I_US[syslog-ng@fixed]}")"
    fi
    echo
fi

# syslog-ng has flushed and closed its files once stopped; gatehouse keeps
# running (`gatehouse logs` may ask it).
if [[ -n ${SPID[syslog-ng]:-} ]]; then
    stop_pid "${SPID[syslog-ng]}"
    forget_pid "${SPID[syslog-ng]}"
fi

printf '\n2. search for "%s" (page cache warm: each command once first, then the median of %s runs [min-max], on core %s):\n' \
    "$NEEDLE" "$RUNS" "$CLIENT_CPU"
declare -A BYTES APPARENT
if [[ -n ${I_STORED[syslog-ng]:-} ]]; then
    SNG_STORE=${STORE[syslog-ng]}
    mapfile -t sng_files < <(cd "$SNG_STORE" && find . -type f -name messages | sort)
    ZST=$TMP/syslog-ng-zst
    for f in "${sng_files[@]}"; do
        mkdir -p "$ZST/$(dirname "$f")"
        taskset -c "$CLIENT_CPU" zstd -q "$SNG_STORE/$f" -o "$ZST/$f.zst" || die "zstd $SNG_STORE/$f failed"
    done
    BYTES[syslog-ng]=$(disk_bytes "$SNG_STORE")
    APPARENT[syslog-ng]=$(apparent_bytes "$SNG_STORE")
    BYTES[zst]=$(disk_bytes "$ZST")
    APPARENT[zst]=$(apparent_bytes "$ZST")
    search grep "grep -r over syslog-ng's files ($(human "${APPARENT[syslog-ng]}"))" grep -r -- "$NEEDLE" "$SNG_STORE" ||
        FAILED[grep]="search failed"
    zst_files=()
    for f in "${sng_files[@]}"; do zst_files+=("$ZST/$f.zst"); done
    search zstdgrep "zstdgrep over zstd -3 copies ($(human "${APPARENT[zst]}"))" zstdgrep -- "$NEEDLE" "${zst_files[@]}" ||
        FAILED[zstdgrep]="search failed"
fi
if [[ -n ${I_STORED[gatehouse]:-} ]]; then
    BYTES[gatehouse]=$(disk_bytes "${STORE[gatehouse]}")
    APPARENT[gatehouse]=$(apparent_bytes "${STORE[gatehouse]}")
    g0=$(cpu_ticks "${SPID[gatehouse]}")
    search gatehouse "gatehouse logs --grep ($(human "${APPARENT[gatehouse]}") store)" \
        "$GH" logs -c "$GH_CONF" --grep "$NEEDLE" || FAILED[gatehouse.search]="search failed"
    g1=$(cpu_ticks "${SPID[gatehouse]}")
    printf '  %-52s gatehouse serve used %s s of CPU during these %s runs\n' "" \
        "$(awk -v d=$((g1 - g0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }')" "$((RUNS + 1))"
fi
# Every search must find exactly the lines sent with the needle.
for k in grep zstdgrep gatehouse; do
    [[ -n ${S_COUNT[$k]:-} ]] || continue
    if [[ ${S_COUNT[$k]} != "$NEEDLES" ]]; then
        echo "  !!!! ${S_LABEL[$k]} found ${S_COUNT[$k]} lines with $NEEDLE, not the $NEEDLES sent: the search figures are not comparable !!!!" >&2
        FAILED[$k.count]="found ${S_COUNT[$k]} of $NEEDLES"
    fi
done
if [[ -n ${S_MED[gatehouse]:-} ]]; then
    [[ -n ${S_MED[grep]:-} ]] && printf '  ratio gatehouse/grep -r: %s (below 1: gatehouse is faster)\n' "$(ratio "${S_MED[gatehouse]}" "${S_MED[grep]}")"
    [[ -n ${S_MED[zstdgrep]:-} ]] && printf '  ratio gatehouse/zstdgrep: %s\n' "$(ratio "${S_MED[gatehouse]}" "${S_MED[zstdgrep]}")"
fi

# ---------------------------------------------------------------- summary
table() {
    local t
    if ((FIXED_RATE > 0)); then
        printf '  same load, %s msg/s for %s s:\n' "$FIXED_RATE" "$FIXED_SECONDS"
        for t in "${TARGETS[@]}"; do
            [[ -n ${I_US[$t@fixed]:-} ]] || continue
            printf '    %-26s server CPU %s of a core, %s µs/msg (stored %s of %s, %s msg/s)\n' "$t" "${I_CPUPCT[$t@fixed]}" \
                "${I_US[$t@fixed]}" "${I_STORED[$t@fixed]}" "${I_SENT[$t@fixed]}" "${I_RATE[$t@fixed]}"
        done
        if [[ -n ${I_US[syslog-ng@fixed]:-} && -n ${I_US[gatehouse@fixed]:-} ]]; then
            printf '    ratio gatehouse/syslog-ng CPU per message: %s\n' "$(ratio "${I_US[gatehouse@fixed]}" "${I_US[syslog-ng@fixed]}")"
        fi
        printf '  as fast as they take it (on disk: everything both runs stored):\n'
    fi
    printf '  %-28s %12s %10s %9s %10s %10s %18s %18s\n' server "stored" "seconds" "msg/s" "loggen/s" "µs CPU/msg" \
        "on disk (du)" "apparent size"
    for t in "${TARGETS[@]}"; do
        if [[ -z ${I_STORED[$t]:-} ]]; then
            printf '  %-28s FAILED: %s\n' "$t" "${FAILED[$t]:-?}"
            continue
        fi
        printf '  %-28s %12s %10s %9s %10s %10s %18s %18s\n' "$t" "${I_STORED[$t]}" "${I_SECS[$t]}" "${I_RATE[$t]}" \
            "${I_LOGGEN[$t]:-?}" "${I_US[$t]}" "${BYTES[$t]:-?} $(human "${BYTES[$t]:-0}")" \
            "${APPARENT[$t]:-?}"
    done
    [[ -n ${BYTES[zst]:-} ]] && printf '  %-28s %12s %10s %9s %10s %10s %18s %18s\n' "(syslog-ng's files, zstd -3)" "" "" "" "" "" \
        "${BYTES[zst]} $(human "${BYTES[zst]}")" "${APPARENT[zst]}"
    if [[ -n ${I_RATE[syslog-ng]:-} && -n ${I_RATE[gatehouse]:-} ]]; then
        printf '  ratio gatehouse/syslog-ng: msg/s %s, CPU per message %s, bytes on disk %s\n' \
            "$(ratio "${I_RATE[gatehouse]}" "${I_RATE[syslog-ng]}")" "$(ratio "${I_US[gatehouse]}" "${I_US[syslog-ng]}")" \
            "$(ratio "${BYTES[gatehouse]:-}" "${BYTES[syslog-ng]:-}")"
        # loggen on one core cannot always saturate the faster server: what
        # each could take with a whole core to itself is 1 / (CPU per message).
        printf '  capacity (messages per second of server CPU): syslog-ng %s, gatehouse %s, ratio %s\n' \
            "$(awk -v u="${I_US[syslog-ng]}" 'BEGIN { printf "%.0f", 1e6 / u }')" \
            "$(awk -v u="${I_US[gatehouse]}" 'BEGIN { printf "%.0f", 1e6 / u }')" \
            "$(ratio "${I_US[syslog-ng]}" "${I_US[gatehouse]}")"
    fi
    for k in grep zstdgrep gatehouse; do
        [[ -n ${S_MED[$k]:-} ]] || continue
        printf '  search %-52s %8s s [%s]  %s lines\n' "${S_LABEL[$k]}" "${S_MED[$k]}" "${S_RANGE[$k]}" "${S_COUNT[$k]}"
    done
    if [[ -n ${S_MED[gatehouse]:-} && -n ${S_MED[grep]:-} ]]; then
        printf '  search ratio gatehouse/grep -r %s, gatehouse/zstdgrep %s (below 1: gatehouse is faster)\n' \
            "$(ratio "${S_MED[gatehouse]}" "${S_MED[grep]}")" "$(ratio "${S_MED[gatehouse]}" "${S_MED[zstdgrep]:-}")"
    fi
}
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | head -c1)
[[ -n $dirty ]] && dirty=" (working tree has uncommitted changes)"
summary=$(cat <<EOF

==== logs summary ====
servers on core $SERVER_CPU, loggen on core $CLIENT_CPU: $SENT messages ($CORPUS_AVG bytes on average, $DISTINCT distinct per connection) over $CONNECTIONS TCP connections (one loggen each) + $NEEDLES needles$( ((FIXED_RATE > 0)) && echo ", after $FIXED_RATE msg/s for $FIXED_SECONDS s"); search median of $RUNS, page cache warm
$(table)
$(for k in "${!FAILED[@]}"; do echo "  FAILED $k: ${FAILED[$k]}"; done)
$(if ((${#DISTURBED[@]})); then echo "  disturbed (other load on the server core):"; printf '    %s\n' "${DISTURBED[@]}"; fi)
machine: $ncpu CPU ($cpu), kernel $(uname -r), syslog-ng $SNG_VERSION, $(grep --version | head -n1), zstd $(zstd -V | grep -o 'v[0-9.]*' | head -n1)
gatehouse $rev$dirty; bench/logs.sh$( ((QUICK)) && echo " --quick") took $(($(date +%s) - STARTED))s
EOF
)
echo
grep -v '^$' <<<"$summary"

((${#FAILED[@]} == 0)) || exit 1
