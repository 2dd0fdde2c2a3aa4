#!/usr/bin/env bash
# bench/proxy.sh: the userspace HTTP proxy, `gatehouse serve` against HAProxy and
# nginx as a reverse proxy, on loopback, in one run.
#
# 1. Throughput and tail latency: wrk (keep-alive) against an nginx backend
#    directly, then through each proxy. Every proxy is pinned to the same one core
#    (PROXY_CPU) and keeps connections alive on both sides; wrk and the backend
#    share the other core (CLIENT_CPU). ROUNDS rounds, each visiting every target
#    in turn, so drift falls on all of them alike.
# 2. Memory: IDLE idle keep-alive client connections (each sends one request,
#    reads the answer, then stays open) to a freshly started proxy; VmRSS before
#    and with them.
#
# No root needed. Everything it starts is stopped by pid when it exits (also on
# Ctrl-C or error) and its temp dir is removed. See bench/README.md.
# shellcheck disable=SC2317 # cleanup and the start_* functions are called indirectly (trap, "start_$name")
set -euo pipefail

DURATION=${DURATION:-10}       # seconds per wrk measurement
WARMUP=${WARMUP:-2}            # seconds of unmeasured load before each measurement
ROUNDS=${ROUNDS:-3}            # rounds over all targets (median reported)
THREADS=${THREADS:-1}          # wrk -t
CONNECTIONS=${CONNECTIONS:-64} # wrk -c
IDLE=${IDLE:-10000}            # idle connections in part 2
PROXY_CPU=${PROXY_CPU:-1}      # the core every proxy is pinned to
CLIENT_CPU=${CLIENT_CPU:-0}    # the core of wrk, the backend and the idle clients

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IDLE_SCRIPT=$ROOT/bench/proxy/idle_conns.py
STARTED=$(date +%s)

die() { echo "proxy: error: $*" >&2; exit 1; }
say() { echo "proxy: $*"; }

for v in DURATION WARMUP ROUNDS THREADS CONNECTIONS IDLE PROXY_CPU CLIENT_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
(( DURATION >= 1 && ROUNDS >= 1 && THREADS >= 1 && CONNECTIONS >= THREADS && IDLE >= 1 )) ||
    die "need DURATION >= 1, ROUNDS >= 1, THREADS >= 1, CONNECTIONS >= THREADS, IDLE >= 1"
(( PROXY_CPU != CLIENT_CPU )) || die "PROXY_CPU and CLIENT_CPU must be different cores"

# ---------------------------------------------------------------- tools
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)"); }
need wrk wrk
need haproxy haproxy
need nginx nginx-light
need taskset util-linux
need python3 python3
need curl curl
need ss iproute2
need getconf libc-bin
(( ${#missing[@]} == 0 )) || die "missing tools: ${missing[*]}"
[[ -r $IDLE_SCRIPT ]] || die "missing $IDLE_SCRIPT"
ncpu=$(nproc --all)
(( PROXY_CPU < ncpu && CLIENT_CPU < ncpu )) ||
    die "this machine has $ncpu CPUs; the benchmark needs cores $CLIENT_CPU and $PROXY_CPU (set PROXY_CPU, CLIENT_CPU)"
taskset -c "$PROXY_CPU" true 2>/dev/null || die "cannot pin to core $PROXY_CPU (not in this process's CPU set?)"
taskset -c "$CLIENT_CPU" true 2>/dev/null || die "cannot pin to core $CLIENT_CPU (not in this process's CPU set?)"

# Every idle client is a descriptor in the proxy and in the client script. Raise
# the soft limit as far as the hard one allows; HAProxy and nginx inherit it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE = unlimited ]] && NOFILE=1048576
(( NOFILE >= IDLE + 1000 )) ||
    die "ulimit -n is $NOFILE; $IDLE idle connections need at least $((IDLE + 1000)) (raise the hard limit, or set IDLE lower)"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d /tmp/gatehouse-proxy-bench.XXXXXX)
# nginx workers run as nobody when started by root; let them into the temp dir.
chmod 755 "$TMP"
# shellcheck source=bench/lib/processes.sh
source "$ROOT/bench/lib/processes.sh"

# ---------------------------------------------------------------- gatehouse binary
find_gatehouse proxy serve "the userspace proxy"

# ---------------------------------------------------------------- servers
# Each start_* function writes its config to $TMP, starts the server in the
# background on its core, waits until it answers, and sets STARTED_PID (the
# process that holds the connections: nginx's worker, not its master).
STARTED_PID=

# Waits until http://127.0.0.1:$1/ answers "hello" through process $2; $3 names it, $4 is its log.
wait_ready() {
    local port=$1 pid=$2 name=$3 log=$4 i body
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "proxy: $name exited while starting; its log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        if body=$(curl -s --noproxy '*' --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null); then
            if [[ $body = hello ]]; then return 0; fi
            echo "proxy: $name answered ${body@Q} instead of \"hello\"; its log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "proxy: $name did not accept connections on port $port within 10 s; its log:" >&2
    tail -n 20 "$log" >&2
    return 1
}

nginx_worker_of() {
    local i kid
    for ((i = 0; i < 50; i++)); do
        kid=$(children_of "$1" | head -n1)
        [[ -n $kid ]] && { echo "$kid"; return 0; }
        sleep 0.1
    done
    return 1
}

# $1 = name, $2 = port, $3 = core, $4 = http{} body (server blocks, upstreams).
start_nginx() {
    local name=$1 port=$2 cpu=$3 dir=$TMP/$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
# written by bench/proxy.sh
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections $((NOFILE - 100));
}
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
$4
}
EOF
    taskset -c "$cpu" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/stderr.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready "$port" "$pid" "$name" "$dir/stderr.log" || return 1
    STARTED_PID=$(nginx_worker_of "$pid") || { echo "proxy: $name has no worker process" >&2; return 1; }
    NGINX_MASTER=$pid
}

BACKEND_PORT=$(free_port)
start_backend() {
    start_nginx backend "$BACKEND_PORT" "$CLIENT_CPU" "    server {
        listen 127.0.0.1:$BACKEND_PORT;
        default_type text/plain;
        location / { return 200 \"hello\\n\"; }
    }"
}

start_nginx_proxy() {
    start_nginx nginx-proxy "$1" "$PROXY_CPU" "    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
}

start_haproxy() {
    local port=$1 dir=$TMP/haproxy
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
# written by bench/proxy.sh
global
    nbthread 1
    maxconn $((IDLE + 5000))
    # HAProxy wants 2 descriptors per maxconn; this benchmark's connections fit in
    # ulimit -n ($NOFILE) even where that estimate does not.
    no strict-limits

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    maxconn $((IDLE + 5000))

frontend bench
    bind 127.0.0.1:$port
    default_backend web

backend web
    server web1 127.0.0.1:$BACKEND_PORT
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 || { cat "$dir/check.log" >&2; return 1; }
    taskset -c "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg" >"$dir/stderr.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready "$port" "$pid" haproxy "$dir/stderr.log" || return 1
    STARTED_PID=$pid
}

start_gatehouse() {
    local port=$1 dir=$TMP/gatehouse
    [[ -z $GH_PROBLEM ]] || return 1
    mkdir -p "$dir"
    cat >"$dir/gatehouse.toml" <<EOF
# written by bench/proxy.sh
[[service]]
name = "bench"
listen = "127.0.0.1:$port"
mode = "http"
balance = "round-robin"
backends = ["127.0.0.1:$BACKEND_PORT"]
timeouts = { idle = "120s" }
max_connections = 20000
EOF
    taskset -c "$PROXY_CPU" "$GH" serve -c "$dir/gatehouse.toml" >"$dir/stderr.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready "$port" "$pid" "gatehouse serve" "$dir/stderr.log" || return 1
    STARTED_PID=$pid
}

# ---------------------------------------------------------------- measuring
CLK_TCK=$(getconf CLK_TCK)
# Per-core jiffies, "cpuN busy steal total ..." for every core (busy = neither
# idle, iowait nor stolen by the hypervisor; guest time is already in user).
cores_snapshot() {
    awk '$1 ~ /^cpu[0-9]+$/ { t = 0; for (i = 2; i <= 9; i++) t += $i; printf "%s %d %d %d ", $1, t - $5 - $6 - $9, $9, t }' /proc/stat
}
# "BUSY% STEAL%" of core $3 between snapshots $1 and $2
core_usage() {
    awk -v a="$1" -v b="$2" -v c="cpu$3" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i += 4) if (x[i] == c) { t = y[i + 3] - x[i + 3]; bu = y[i + 1] - x[i + 1]; st = y[i + 2] - x[i + 2] }
        if (t > 0) printf "%.0f%% %.0f%%", bu * 100 / t, st * 100 / t; else printf "? ?" }'
}
vmrss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# One wrk measurement of http://127.0.0.1:$2/ ($1 names it; $3 is the pid whose
# CPU time is reported). Prints a line; sets LAST_RPS, LAST_P99 (ms), LAST_CPU (%)
# and LAST_EFF (requests per CPU-second of that process).
measure() {
    local name=$1 port=$2 pid=$3 round=$4 url=http://127.0.0.1:$2/ out=$TMP/wrk-$1-$4.txt
    local t0 t1 s0 s1 rps p99 non2xx sockerr
    run taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
    t0=$(cpu_ticks "$pid")
    s0=$(cores_snapshot)
    if ! run taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency \
        "$url" >"$out" 2>&1; then
        echo "proxy: wrk against $name failed: $(cat "$out")" >&2
        return 1
    fi
    kill -0 "$pid" 2>/dev/null || { echo "proxy: $name died during the measurement" >&2; return 1; }
    t1=$(cpu_ticks "$pid")
    s1=$(cores_snapshot)
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    [[ -n $rps ]] || { echo "proxy: no Requests/sec in wrk's output: $(cat "$out")" >&2; return 1; }
    # wrk --latency: "     99%    1.23ms" (us, ms or s)
    p99=$(awk '$1 == "99%" { v = $2; u = v; sub(/[a-z]+$/, "", v); sub(/^[0-9.]+/, "", u);
              printf "%.2f", (u == "us" ? v / 1000 : u == "s" ? v * 1000 : u == "m" ? v * 60000 : v) }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(awk -F': ' '/Socket errors:/ { print $2 }' "$out")
    LAST_RPS=$rps
    LAST_P99=$p99
    LAST_CPU=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN { printf "%.0f", d / hz / s * 100 }')
    LAST_EFF=$(awk -v r="$rps" -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$DURATION" \
        'BEGIN { if (d > 0) printf "%.0f", r * s / (d / hz); else print 0 }')
    local pbusy psteal cbusy csteal
    read -r pbusy psteal < <(core_usage "$s0" "$s1" "$PROXY_CPU")
    read -r cbusy csteal < <(core_usage "$s0" "$s1" "$CLIENT_CPU")
    printf '  round %d  %-10s %6s req/s  p99 %6s ms  %s CPU %4s  core %s busy %4s steal %3s  core %s busy %4s steal %3s  non-2xx: %s  socket errors: %s\n' \
        "$round" "$name" "$rps" "$p99" "$(if [[ $name = direct ]]; then echo backend; else echo "  proxy"; fi)" \
        "$LAST_CPU%" "$PROXY_CPU" "$pbusy" "$psteal" "$CLIENT_CPU" "$cbusy" "$csteal" "${non2xx:-0}" "${sockerr:-none}"
    # The proxy core should be busy with the proxy alone (idle for the direct line).
    local own=$LAST_CPU
    [[ $name = direct ]] && own=0
    local other
    other=$(awk -v b="${pbusy%\%}" -v s="${psteal%\%}" -v o="$own" 'BEGIN { printf "%.0f", b + s - o }')
    if (( other > 15 )); then
        echo "  warning: something else had ${other}% of core $PROXY_CPU (steal included) during this measurement; its figures are disturbed"
        DISTURBED+=("round $round $name: ${other}% of core $PROXY_CPU")
    fi
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minimum() { sort -g | head -n1; }
maximum() { sort -g | tail -n1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }

haproxy_v=$(haproxy -v 2>&1 | awk 'NR == 1 { print $3 }')
haproxy_short=${haproxy_v%%-*} # 2.6.12-1+deb12u4 -> 2.6.12
nginx_v=$( (nginx -v 2>&1 || true) | sed 's/^nginx version: nginx\///')
TARGETS=(direct gatehouse haproxy nginx)
declare -A LABEL=([direct]="direct to nginx" [gatehouse]="gatehouse serve" [haproxy]="HAProxy $haproxy_short"
    [nginx]="nginx $nginx_v proxy")
DISTURBED=() # measurements during which something else ran on the proxy core
declare -A PORT PID FAILED RPS P99 CPU RPS_RANGE P99_RANGE

# ---------------------------------------------------------------- part 1: throughput
printf '\n== part 1: keep-alive requests per second, %s connections ==\n' "$CONNECTIONS"
printf 'wrk -t%s -c%s -d%ss --latency (after %ss warm-up) on core %s with the backend (nginx, return 200 "hello\\n");\n' \
    "$THREADS" "$CONNECTIONS" "$DURATION" "$WARMUP" "$CLIENT_CPU"
printf 'each proxy pinned to core %s, keep-alive to the client and to the backend; %s rounds.\n\n' "$PROXY_CPU" "$ROUNDS"

start_backend || die "the backend nginx did not start"
BACKEND_PID=$STARTED_PID
NGINX_BACKEND_MASTER=$NGINX_MASTER
PORT[direct]=$BACKEND_PORT
PID[direct]=$BACKEND_PID
for t in gatehouse haproxy nginx; do
    PORT[$t]=$(free_port)
    if "start_${t/nginx/nginx_proxy}" "${PORT[$t]}"; then
        PID[$t]=$STARTED_PID
    else
        FAILED[$t]="did not start"
        [[ $t = gatehouse && -n $GH_PROBLEM ]] && FAILED[$t]=$GH_PROBLEM
    fi
done

declare -A RUN_RPS RUN_P99 RUN_CPU RUN_EFF EFF EFF_RANGE
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do
        [[ -z ${FAILED[$t]:-} ]] || continue
        if measure "$t" "${PORT[$t]}" "${PID[$t]}" "$r"; then
            RUN_RPS[$t]+="$LAST_RPS "
            RUN_P99[$t]+="$LAST_P99 "
            RUN_CPU[$t]+="$LAST_CPU "
            RUN_EFF[$t]+="$LAST_EFF "
        else
            FAILED[$t]="failed in round $r (see above)"
        fi
    done
done

for t in "${TARGETS[@]}"; do
    [[ -z ${FAILED[$t]:-} && -n ${RUN_RPS[$t]:-} ]] || continue
    RPS[$t]=$(tr ' ' '\n' <<<"${RUN_RPS[$t]}" | grep . | median | awk '{ printf "%.0f", $1 }')
    P99[$t]=$(tr ' ' '\n' <<<"${RUN_P99[$t]}" | grep . | median)
    CPU[$t]=$(tr ' ' '\n' <<<"${RUN_CPU[$t]}" | grep . | median | awk '{ printf "%.0f", $1 }')
    EFF[$t]=$(tr ' ' '\n' <<<"${RUN_EFF[$t]}" | grep . | median | awk '{ printf "%.0f", $1 }')
    EFF_RANGE[$t]="$(tr ' ' '\n' <<<"${RUN_EFF[$t]}" | grep . | minimum)-$(tr ' ' '\n' <<<"${RUN_EFF[$t]}" | grep . | maximum)"
    RPS_RANGE[$t]="$(tr ' ' '\n' <<<"${RUN_RPS[$t]}" | grep . | minimum)-$(tr ' ' '\n' <<<"${RUN_RPS[$t]}" | grep . | maximum)"
    P99_RANGE[$t]="$(tr ' ' '\n' <<<"${RUN_P99[$t]}" | grep . | minimum)-$(tr ' ' '\n' <<<"${RUN_P99[$t]}" | grep . | maximum)"
done

throughput_table() {
    printf '  %-22s %-22s %-22s %-9s %s\n' target "req/s [min-max]" "p99 ms [min-max]" "CPU" \
        "req per CPU-second [min-max]"
    for t in "${TARGETS[@]}"; do
        if [[ -n ${FAILED[$t]:-} ]]; then
            printf '  %-22s FAILED: %s\n' "${LABEL[$t]}" "${FAILED[$t]}"
        else
            printf '  %-22s %-22s %-22s %-9s %s\n' "${LABEL[$t]}" "${RPS[$t]} [${RPS_RANGE[$t]}]" \
                "${P99[$t]} [${P99_RANGE[$t]}]" "${CPU[$t]}%" "${EFF[$t]} [${EFF_RANGE[$t]}]"
        fi
    done
    local peer
    for peer in haproxy nginx; do
        printf '  %-22s req/s %-6s p99 %-6s req per CPU-second %s\n' "gatehouse / ${LABEL[$peer]%% *}" \
            "$(ratio "${RPS[gatehouse]:-}" "${RPS[$peer]:-}")" "$(ratio "${P99[gatehouse]:-}" "${P99[$peer]:-}")" \
            "$(ratio "${EFF[gatehouse]:-}" "${EFF[$peer]:-}")"
    done
}
printf '\nmedian of %s rounds [min-max] (req/s ratio above 1: gatehouse faster; p99 ratio below 1: gatehouse faster):\n' "$ROUNDS"
throughput_table

# The proxies are stopped before part 2 so each is measured fresh and alone.
for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    [[ ${PIDS[i]} = "$NGINX_BACKEND_MASTER" ]] && continue
    stop_pid "${PIDS[i]}"
done
PIDS=("$NGINX_BACKEND_MASTER")

# ---------------------------------------------------------------- part 2: memory
printf '\n== part 2: memory with %s idle keep-alive connections ==\n' "$IDLE"
printf 'each proxy freshly started (pinned to core %s), 10 requests, then VmRSS; then %s clients each send one\n' \
    "$PROXY_CPU" "$IDLE"
printf 'request, read the answer and stay open (bench/proxy/idle_conns.py on core %s); VmRSS again.\n\n' "$CLIENT_CPU"

declare -A MEM
mem_row() {
    local t=$1 port pid before with held out ready master_note=
    port=$(free_port)
    if ! "start_${t/nginx/nginx_proxy}" "$port"; then
        MEM[$t]=$(printf '  %-22s FAILED: %s' "${LABEL[$t]}" "$([[ $t = gatehouse && -n $GH_PROBLEM ]] && echo "$GH_PROBLEM" || echo "did not start")")
        echo "${MEM[$t]}"
        return 1
    fi
    pid=$STARTED_PID
    for ((i = 0; i < 10; i++)); do curl -s --noproxy '*' -o /dev/null "http://127.0.0.1:$port/" || true; done
    sleep 0.5
    before=$(vmrss_kb "$pid")
    out=$TMP/idle-$t.out
    taskset -c "$CLIENT_CPU" python3 "$IDLE_SCRIPT" 127.0.0.1 "$port" "$IDLE" --hold 600 >"$out" 2>&1 &
    local client=$!
    PIDS+=("$client")
    for ((i = 0; i < 1200; i++)); do
        grep -q '^ready' "$out" && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    ready=$(grep '^ready' "$out" || true)
    if [[ -z $ready ]]; then
        echo "proxy: the idle clients did not get ready against ${LABEL[$t]}: $(tail -n 5 "$out")" >&2
        MEM[$t]=$(printf '  %-22s FAILED: idle clients did not get ready' "${LABEL[$t]}")
    else
        sleep 1
        with=$(vmrss_kb "$pid")
        held=$(ss -Htn state established "( sport = :$port )" | wc -l)
        [[ $t = nginx ]] && master_note=" (+ master $(awk -v k="$(vmrss_kb "$NGINX_MASTER")" 'BEGIN { printf "%.1f", k / 1024 }') MiB)"
        MEM[$t]=$(awk -v name="${LABEL[$t]}" -v b="$before" -v w="$with" -v n="$IDLE" -v held="$held" \
            -v ready="${ready#ready }" -v note="$master_note" 'BEGIN {
                printf "  %-22s %9.1f MiB %12.1f MiB %10.1f MiB %8.1f KiB   %-6s %s%s", name, b / 1024, w / 1024,
                    (w - b) / 1024, (w - b) / n, held, ready, note }')
    fi
    echo "${MEM[$t]}"
    stop_pid "$client"
    forget_pid "$client"
    # Stop the proxy (and, for nginx, its master) before the next one.
    local p
    for p in "${PIDS[@]}"; do
        [[ $p = "$NGINX_BACKEND_MASTER" ]] && continue
        stop_pid "$p"
        forget_pid "$p"
    done
}

mem_header() {
    printf '  %-22s %13s %16s %14s %12s   %-6s %s\n' proxy "VmRSS before" "with $IDLE idle" growth "per conn" held \
        "client's view"
}
mem_header
for t in gatehouse haproxy nginx; do mem_row "$t" || true; done

# ---------------------------------------------------------------- summary
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
wrk_v=$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | head -c1)
[[ -n $dirty ]] && dirty=" (working tree has uncommitted changes)"
elapsed=$(($(date +%s) - STARTED))

cat <<EOF

==== proxy summary ====
keep-alive requests/s and p99 through one proxy core (wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s x $ROUNDS rounds, median [min-max]):
$(throughput_table)
$(if ((${#DISTURBED[@]})); then echo "  disturbed (other load on the proxy core):"; printf '    %s\n' "${DISTURBED[@]}"; fi)
memory with $IDLE idle keep-alive connections (VmRSS):
$(mem_header)
$(for t in gatehouse haproxy nginx; do echo "${MEM[$t]:-  ${LABEL[$t]}: not measured}"; done)
machine: $ncpu CPU ($cpu), kernel $(uname -r), HAProxy $haproxy_v, nginx $nginx_v, wrk $wrk_v, ulimit -n $NOFILE
gatehouse $rev$dirty; bench/proxy.sh took ${elapsed}s
EOF

failed=0
for t in "${TARGETS[@]}"; do [[ -z ${FAILED[$t]:-} ]] || failed=1; done
for t in gatehouse haproxy nginx; do [[ ${MEM[$t]:-FAILED} != *FAILED* ]] || failed=1; done
exit "$failed"
