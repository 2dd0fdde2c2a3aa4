#!/usr/bin/env bash
# bench/tls.sh: TLS termination, `gatehouse serve` against HAProxy and nginx, on
# loopback, in one run, with the same certificate and the same cipher suite.
#
# Each proxy, pinned to the same one core (PROXY_CPU), terminates TLS and forwards
# plain HTTP/1.1 with keep-alive to one nginx backend. The clients and the backend
# share the other core (CLIENT_CPU). Three measurements, each visiting every proxy
# in turn, ROUNDS rounds (median reported):
#
# 1. New TLS handshakes per second, no session resumption: HANDSHAKE_CLIENTS
#    parallel clients (threads of bench/tls/handshakes, a small rustls client
#    built here; or `openssl s_time -new` processes with HANDSHAKE_CLIENT=s_time)
#    each handshaking, closing and starting over.
# 2. Keep-alive HTTPS requests per second and p99: wrk over TLS (HTTP/1.1).
# 3. HTTP/2 requests per second: h2load (ALPN h2, H2_CLIENTS x H2_STREAMS).
#
# Certificate: one ECDSA P-256 key and self-signed certificate (CN and SAN
# bench.example.test), made with openssl in the temp dir. Cipher suite: TLS 1.3,
# TLS_AES_128_GCM_SHA256, key exchange X25519. HAProxy and nginx are configured
# for exactly that; gatehouse has no cipher option, so every client is also
# restricted to it (an OpenSSL config file for all of them, plus the tools' own
# options), and s_client checks what each proxy negotiates before measuring.
#
# No root needed. Everything it starts is stopped by pid when it exits (also on
# Ctrl-C or error) and its temp dir is removed. See bench/README.md.
# shellcheck disable=SC2317 # cleanup and the start_* functions are called indirectly (trap, "start_$name")
set -euo pipefail

DURATION=${DURATION:-10}                        # seconds per measurement
WARMUP=${WARMUP:-2}                             # seconds of unmeasured load before each measurement
ROUNDS=${ROUNDS:-3}                             # rounds over all proxies (median reported)
HANDSHAKE_CLIENT=${HANDSHAKE_CLIENT:-rustls}    # rustls (bench/tls/handshakes) or s_time (openssl s_time -new)
HANDSHAKE_CLIENTS=${HANDSHAKE_CLIENTS:-8}       # parallel handshaking clients (threads or s_time processes)
THREADS=${THREADS:-1}                           # wrk -t
CONNECTIONS=${CONNECTIONS:-64}                  # wrk -c
H2_CLIENTS=${H2_CLIENTS:-16}                    # h2load -c (connections)
H2_STREAMS=${H2_STREAMS:-32}                    # h2load -m (concurrent streams per connection)
PROXY_CPU=${PROXY_CPU:-1}                       # the core every proxy is pinned to
CLIENT_CPU=${CLIENT_CPU:-0}                     # the core of the clients and the backend
PROXIES=${PROXIES:-gatehouse haproxy nginx}     # which proxies to measure (any of these three)
RESULTS=${RESULTS:-}                            # a directory for the raw figures (default: print only)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HS_SRC=$ROOT/bench/tls/handshakes
STARTED=$(date +%s)
SNI=bench.example.test
SUITE=TLS_AES_128_GCM_SHA256
GROUP=X25519

die() { echo "tls: error: $*" >&2; exit 1; }
say() { echo "tls: $*"; }

for v in DURATION WARMUP ROUNDS HANDSHAKE_CLIENTS THREADS CONNECTIONS H2_CLIENTS H2_STREAMS PROXY_CPU CLIENT_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
(( DURATION >= 1 && ROUNDS >= 1 && HANDSHAKE_CLIENTS >= 1 && THREADS >= 1 && CONNECTIONS >= THREADS &&
    H2_CLIENTS >= 1 && H2_STREAMS >= 1 )) ||
    die "need DURATION, ROUNDS, HANDSHAKE_CLIENTS, THREADS, H2_CLIENTS, H2_STREAMS >= 1 and CONNECTIONS >= THREADS"
(( PROXY_CPU != CLIENT_CPU )) || die "PROXY_CPU and CLIENT_CPU must be different cores"
[[ $HANDSHAKE_CLIENT =~ ^(rustls|s_time)$ ]] || die "HANDSHAKE_CLIENT must be rustls or s_time (got '$HANDSHAKE_CLIENT')"
read -r -a TARGETS <<<"$PROXIES"
(( ${#TARGETS[@]} >= 1 )) || die "PROXIES is empty (pick from: gatehouse haproxy nginx)"
for t in "${TARGETS[@]}"; do
    [[ $t =~ ^(gatehouse|haproxy|nginx)$ ]] || die "PROXIES: unknown proxy '$t' (pick from: gatehouse haproxy nginx)"
done
has() { [[ " ${TARGETS[*]} " = *" $1 "* ]]; }
if [[ -n $RESULTS ]]; then
    { mkdir -p "$RESULTS" 2>/dev/null && [[ -w $RESULTS ]]; } || die "RESULTS: cannot write to directory '$RESULTS'"
fi

# ---------------------------------------------------------------- tools
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)"); }
need openssl openssl
need wrk wrk
need h2load nghttp2-client
need nginx nginx-light
has haproxy && need haproxy haproxy
need taskset util-linux
need python3 python3
need curl curl
need getconf libc-bin
[[ $HANDSHAKE_CLIENT = rustls ]] && need cargo "cargo (or rustup)"
(( ${#missing[@]} == 0 )) || die "missing tools: ${missing[*]}"
[[ $HANDSHAKE_CLIENT = s_time || -r $HS_SRC/Cargo.toml ]] || die "missing $HS_SRC/Cargo.toml"
nginx_modules=$(nginx -V 2>&1)
[[ $nginx_modules = *--with-http_ssl_module* ]] || die "this nginx has no ssl module (nginx -V); install nginx-light or nginx"
if has nginx; then
    [[ $nginx_modules = *--with-http_v2_module* ]] || die "this nginx has no http_v2 module (nginx -V); install nginx-light or nginx"
fi
h2load_help=$(h2load --help 2>&1 || true) # (not piped into grep -q: h2load would die of SIGPIPE)
[[ $h2load_help = *--tls13-ciphers* ]] || die "this h2load has no --tls13-ciphers (need nghttp2-client 1.40 or later)"
ncpu=$(nproc --all)
(( PROXY_CPU < ncpu && CLIENT_CPU < ncpu )) ||
    die "this machine has $ncpu CPUs; the benchmark needs cores $CLIENT_CPU and $PROXY_CPU (set PROXY_CPU, CLIENT_CPU)"
taskset -c "$PROXY_CPU" true 2>/dev/null || die "cannot pin to core $PROXY_CPU (not in this process's CPU set?)"
taskset -c "$CLIENT_CPU" true 2>/dev/null || die "cannot pin to core $CLIENT_CPU (not in this process's CPU set?)"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE = unlimited ]] && NOFILE=1048576
(( NOFILE >= 4096 )) || die "ulimit -n is $NOFILE; need at least 4096"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d /tmp/gatehouse-tls-bench.XXXXXX)
# nginx workers run as nobody when started by root; let them into the temp dir
# (the key is readable by them too: a throwaway key for loopback).
chmod 755 "$TMP"

# shellcheck source=bench/lib/processes.sh
source "$ROOT/bench/lib/processes.sh"

# ---------------------------------------------------------------- certificate, client TLS settings
CERT=$TMP/cert.pem
KEY=$TMP/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=$SNI" -addext "subjectAltName=DNS:$SNI" -keyout "$KEY" -out "$CERT" >"$TMP/req.log" 2>&1 ||
    die "openssl could not make the certificate: $(cat "$TMP/req.log")"
chmod 644 "$KEY"

# Every client (s_time, wrk, h2load, s_client, curl) reads this instead of the
# system's openssl.cnf: TLS 1.3 only, one cipher suite, one group. wrk has no
# options for either; OpenSSL applies "system_default" to every SSL_CTX it makes.
CLIENT_CNF=$TMP/client-openssl.cnf
cat >"$CLIENT_CNF" <<EOF
# written by bench/tls.sh: the clients' TLS settings
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.3
Ciphersuites = $SUITE
Groups = $GROUP
EOF
client() { env OPENSSL_CONF="$CLIENT_CNF" taskset -c "$CLIENT_CPU" "$@"; }

# ---------------------------------------------------------------- handshake client
if [[ $HANDSHAKE_CLIENT = rustls ]]; then
    HS_DESC="bench/tls/handshakes (rustls) with $HANDSHAKE_CLIENTS threads"
else
    HS_DESC="$HANDSHAKE_CLIENTS x openssl s_time -new -ciphersuites $SUITE"
fi
target=${CARGO_TARGET_DIR:-target}
[[ $target = /* ]] || target=$ROOT/$target
if [[ $HANDSHAKE_CLIENT = rustls ]]; then
    say "building the handshake client (cargo build --release --locked in $HS_SRC)"
    HS_BIN=$target/bench-tls/release/tls-handshakes
    (cd "$HS_SRC" && cargo build --release --locked --quiet --target-dir "$target/bench-tls") >"$TMP/hs-build.log" 2>&1 ||
        { tail -n 20 "$TMP/hs-build.log" >&2; die "could not build $HS_SRC (output above); HANDSHAKE_CLIENT=s_time needs no build"; }
fi

# ---------------------------------------------------------------- gatehouse binary
GH_PROBLEM= # why gatehouse cannot be measured, if it cannot
has gatehouse && find_gatehouse tls serve "the userspace proxy"

# ---------------------------------------------------------------- servers
# Each start_* function writes its config to $TMP, starts the server in the
# background on its core, waits until it answers, and sets STARTED_PID (the
# process that holds the connections: nginx's worker, not its master).
STARTED_PID=

# Waits until URL $1 answers "ok" through process $2; $3 names it, $4 is its log.
# HTTPS URLs are fetched with the clients' TLS settings, by name (SNI) at 127.0.0.1.
wait_ready() {
    local url=$1 pid=$2 name=$3 log=$4 i body port
    port=${url##*:}
    port=${port%/}
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "tls: $name exited while starting; its log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        if body=$(env OPENSSL_CONF="$CLIENT_CNF" curl -s --noproxy '*' --max-time 1 --cacert "$CERT" \
            --resolve "$SNI:$port:127.0.0.1" "$url" 2>/dev/null); then
            if [[ $body = ok ]]; then return 0; fi
            echo "tls: $name answered ${body@Q} instead of \"ok\"; its log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "tls: $name did not answer $url within 10 s; its log:" >&2
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

# $1 = name, $2 = URL it answers on, $3 = core, $4 = http{} body (server blocks, upstreams).
start_nginx() {
    local name=$1 url=$2 cpu=$3 dir=$TMP/$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
# written by bench/tls.sh
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 20000;
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
    wait_ready "$url" "$pid" "$name" "$dir/stderr.log" || return 1
    STARTED_PID=$(nginx_worker_of "$pid") || { echo "tls: $name has no worker process" >&2; return 1; }
}

BACKEND_PORT=$(free_port)
start_backend() {
    start_nginx backend "http://127.0.0.1:$BACKEND_PORT/" "$CLIENT_CPU" "    server {
        listen 127.0.0.1:$BACKEND_PORT;
        default_type text/plain;
        location / { return 200 \"ok\\n\"; }
    }"
}

start_nginx_proxy() {
    start_nginx nginx-proxy "https://$SNI:$1/" "$PROXY_CPU" "    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$1 ssl http2;
        server_name $SNI;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve $GROUP;
        ssl_conf_command Ciphersuites $SUITE;
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
    # HAProxy reads the certificate and its key from one file.
    cat "$CERT" "$KEY" >"$dir/bench.pem"
    cat >"$dir/haproxy.cfg" <<EOF
# written by bench/tls.sh
global
    nbthread 1
    maxconn 5000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-bind-ciphersuites $SUITE
    ssl-default-bind-curves $GROUP

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    maxconn 5000

frontend bench
    bind 127.0.0.1:$port ssl crt $dir/bench.pem alpn h2,http/1.1
    default_backend web

backend web
    server web1 127.0.0.1:$BACKEND_PORT
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 || { cat "$dir/check.log" >&2; return 1; }
    taskset -c "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg" >"$dir/stderr.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready "https://$SNI:$port/" "$pid" haproxy "$dir/stderr.log" || return 1
    STARTED_PID=$pid
}

start_gatehouse() {
    local port=$1 dir=$TMP/gatehouse
    [[ -z $GH_PROBLEM ]] || return 1
    mkdir -p "$dir"
    cat >"$dir/gatehouse.toml" <<EOF
# written by bench/tls.sh
[[service]]
name = "bench"
listen = "127.0.0.1:$port"
mode = "http"
balance = "round-robin"
tls = [ { cert = "$CERT", key = "$KEY" } ]
backends = ["127.0.0.1:$BACKEND_PORT"]
timeouts = { idle = "120s" }
max_connections = 20000
EOF
    if ! "$GH" check -c "$dir/gatehouse.toml" >"$dir/check.log" 2>&1; then
        cat "$dir/check.log" >&2
        GH_PROBLEM="gatehouse check refuses the config with tls = [...] (output above)"
        return 1
    fi
    taskset -c "$PROXY_CPU" "$GH" serve -c "$dir/gatehouse.toml" >"$dir/stderr.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready "https://$SNI:$port/" "$pid" "gatehouse serve" "$dir/stderr.log" || return 1
    STARTED_PID=$pid
}

# ---------------------------------------------------------------- what each proxy negotiates
# One s_client handshake to port $1 with the clients' settings (SNI, ALPN $2);
# prints "protocol cipher group signature alpn" (a "?" for anything missing).
negotiated() {
    local out
    out=$(client openssl s_client -connect "127.0.0.1:$1" -servername "$SNI" -alpn "$2" -ciphersuites "$SUITE" \
        -groups "$GROUP" </dev/null 2>&1) || true
    awk '
        /^New, / { proto = $2; sub(/,$/, "", proto); cipher = $NF }
        /^Server Temp Key:/ { group = $4; sub(/,$/, "", group) }
        /^Peer signature type:/ { sig = $4 }
        /^ALPN protocol:/ { alpn = $3 }
        /^No ALPN negotiated/ { alpn = "none" }
        END { printf "%s %s %s %s %s\n", proto ? proto : "?", cipher ? cipher : "?", group ? group : "?",
                  sig ? sig : "?", alpn ? alpn : "?" }' <<<"$out"
}

# What the server picks by itself, for a client with OpenSSL's defaults (which
# offers TLS_AES_256_GCM_SHA384 first): "cipher group".
server_choice() {
    local out
    out=$(taskset -c "$CLIENT_CPU" openssl s_client -connect "127.0.0.1:$1" -servername "$SNI" </dev/null 2>&1) || true
    awk '/^New, / { cipher = $NF } /^Server Temp Key:/ { group = $4; sub(/,$/, "", group) }
        END { printf "%s %s\n", cipher ? cipher : "?", group ? group : "?" }' <<<"$out"
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

# Around one measurement: begin_usage before, end_usage after (with the elapsed
# seconds). end_usage sets LAST_CPU (the proxy's CPU time as % of one core) and
# USAGE (the text that ends the measurement's line), and warns when something else
# had the proxy core.
begin_usage() {
    U_T0=$(cpu_ticks "$1")
    U_S0=$(cores_snapshot)
    U_START=$(date +%s.%N)
}
end_usage() {
    local name=$1 pid=$2 round=$3 what=$4 t1 s1 secs pbusy psteal cbusy csteal other
    t1=$(cpu_ticks "$pid")
    s1=$(cores_snapshot)
    secs=$(awk -v a="$U_START" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    LAST_SECS=$secs
    LAST_CPU=$(awk -v d=$((t1 - U_T0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.0f", d / hz / s * 100 }')
    read -r pbusy psteal < <(core_usage "$U_S0" "$s1" "$PROXY_CPU")
    read -r cbusy csteal < <(core_usage "$U_S0" "$s1" "$CLIENT_CPU")
    USAGE=$(printf 'proxy CPU %4s  core %s busy %4s steal %3s  core %s busy %4s steal %3s' "$LAST_CPU%" \
        "$PROXY_CPU" "$pbusy" "$psteal" "$CLIENT_CPU" "$cbusy" "$csteal")
    other=$(awk -v b="${pbusy%\%}" -v s="${psteal%\%}" -v o="$LAST_CPU" 'BEGIN { printf "%.0f", b + s - o }')
    DISTURB=
    if (( other > 15 )); then
        DISTURB="  warning: something else had ${other}% of core $PROXY_CPU (steal included) during this measurement; its figures are disturbed"
        DISTURBED+=("round $round $what $name: ${other}% of core $PROXY_CPU")
    fi
}

# $1 per second, divided by the proxy's CPU share: per second of the proxy's CPU time.
eff() { awk -v r="$1" -v c="$LAST_CPU" 'BEGIN { if (c > 0) printf "%.0f", r * 100 / c; else print 0 }'; }

# Raw figures, one line per measurement (written to $RESULTS at the end).
RAW=$TMP/raw.tsv
printf 'round\tmetric\tproxy\tvalue\tunit\tp99_ms\tproxy_cpu_pct\tper_proxy_cpu_second\terrors\n' >"$RAW"

# 1. New handshakes/s: HANDSHAKE_CLIENTS parallel clients on the client core, each
# handshaking, closing and starting over for $2 seconds. Their outputs go to
# $3.1, $3.2, ...
handshake_clients() {
    local port=$1 secs=$2 prefix=$3 i pids=() rc=0
    if [[ $HANDSHAKE_CLIENT = rustls ]]; then
        run client "$HS_BIN" "127.0.0.1:$port" "$SNI" "$secs" "$HANDSHAKE_CLIENTS" >"$prefix.1" 2>&1
        return
    fi
    # s_time: no CA lookups (they cost more than the handshake: it would search
    # /etc/ssl/certs on every connection), and it does not verify anyway.
    for ((i = 1; i <= HANDSHAKE_CLIENTS; i++)); do
        client openssl s_time -connect "127.0.0.1:$port" -new -time "$secs" -ciphersuites "$SUITE" \
            -no-CAfile -no-CApath -no-CAstore >"$prefix.$i" 2>&1 &
        pids+=($!)
        PIDS+=($!)
    done
    for i in "${pids[@]}"; do
        wait "$i" || rc=1
        forget_pid "$i"
    done
    return "$rc"
}
# Sets LAST_VAL (handshakes/s) and LAST_EFF (handshakes per proxy CPU-second).
measure_handshakes() {
    local name=$1 port=$2 pid=$3 round=$4 out=$TMP/hs-$1-$4 hs errs got rate neg
    handshake_clients "$port" "$WARMUP" "$TMP/hs-warmup" >/dev/null 2>&1 || true
    begin_usage "$pid"
    if ! handshake_clients "$port" "$DURATION" "$out"; then
        echo "tls: the handshake clients against $name failed: $(cat "$out".*)" >&2
        return 1
    fi
    kill -0 "$pid" 2>/dev/null || { echo "tls: $name died during the measurement" >&2; return 1; }
    end_usage "$name" "$pid" "$round" handshakes
    # rustls client: "handshakes 41234 seconds 10.003 errors 0"; s_time, one line
    # per process: "12345 connections in 11 real seconds, 0 bytes read per
    # connection" (whole seconds, and s_time runs up to a second past -time: the
    # rate is taken over the wall-clock time of the whole measurement instead).
    if [[ $HANDSHAKE_CLIENT = rustls ]]; then
        hs=$(awk '/^handshakes / { print $2 }' "$out.1")
        errs=$(awk '/^handshakes / { n = $6 } /^first error:/ { sub(/^first error: /, ""); e = " (first: " $0 ")" }
            END { printf "%s%s", n, e }' "$out.1")
        got=0
        [[ -n $hs ]] && got=$HANDSHAKE_CLIENTS
        neg=$(awk '/^negotiated / { print $2, $3, $4 }' "$out.1")
        [[ $neg = "TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519" ]] ||
            echo "  !!!! WARNING: the handshake client negotiated '${neg:-nothing}' with $name !!!!"
    else
        hs=$(cat "$out".* | awk '/connections in [0-9.]+ real seconds/ { n += $1; k++ } END { if (k) print n }')
        got=$(cat "$out".* | grep -c 'real seconds' || true)
        errs=n/a
    fi
    if [[ -z $hs || $got -ne $HANDSHAKE_CLIENTS ]]; then
        echo "tls: handshakes against $name: $got of $HANDSHAKE_CLIENTS clients reported; their output: $(cat "$out".*)" >&2
        return 1
    fi
    rate=$(awk -v n="$hs" -v s="$LAST_SECS" 'BEGIN { printf "%.0f", n / s }')
    LAST_VAL=$rate
    LAST_EFF=$(eff "$rate")
    printf '  round %d  %-10s %7s handshakes/s  %7s per proxy CPU-second  %s  errors: %s\n' "$round" "$name" "$rate" \
        "$LAST_EFF" "$USAGE" "$errs"
    [[ -z $DISTURB ]] || echo "$DISTURB"
    printf '%s\thandshakes\t%s\t%s\thandshakes/s\t\t%s\t%s\terrors %s\n' "$round" "$name" "$rate" "$LAST_CPU" \
        "$LAST_EFF" "$errs" >>"$RAW"
}

# 2. Keep-alive HTTPS: wrk over TLS (HTTP/1.1, no ALPN). Sets LAST_VAL and LAST_P99.
measure_keepalive() {
    local name=$1 port=$2 pid=$3 round=$4 url=https://127.0.0.1:$2/ out=$TMP/wrk-$1-$4.txt rps p99 non2xx sockerr
    client wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -H "Host: $SNI" "$url" >/dev/null 2>&1 || true
    begin_usage "$pid"
    if ! run client wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency -H "Host: $SNI" \
        "$url" >"$out" 2>&1; then
        echo "tls: wrk against $name failed: $(cat "$out")" >&2
        return 1
    fi
    kill -0 "$pid" 2>/dev/null || { echo "tls: $name died during the measurement" >&2; return 1; }
    end_usage "$name" "$pid" "$round" keep-alive
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    [[ -n $rps ]] || { echo "tls: no Requests/sec in wrk's output: $(cat "$out")" >&2; return 1; }
    # wrk --latency: "     99%    1.23ms" (us, ms or s)
    p99=$(awk '$1 == "99%" { v = $2; u = v; sub(/[a-z]+$/, "", v); sub(/^[0-9.]+/, "", u);
              printf "%.2f", (u == "us" ? v / 1000 : u == "s" ? v * 1000 : u == "m" ? v * 60000 : v) }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(awk -F': ' '/Socket errors:/ { print $2 }' "$out")
    LAST_VAL=$rps
    LAST_P99=$p99
    LAST_EFF=$(eff "$rps")
    printf '  round %d  %-10s %7s req/s  %7s per proxy CPU-second  p99 %6s ms  %s  non-2xx: %s  socket errors: %s\n' \
        "$round" "$name" "$rps" "$LAST_EFF" "$p99" "$USAGE" "${non2xx:-0}" "${sockerr:-none}"
    [[ -z $DISTURB ]] || echo "$DISTURB"
    printf '%s\tkeep-alive\t%s\t%s\treq/s\t%s\t%s\t%s\tnon-2xx %s, socket errors %s\n' "$round" "$name" "$rps" \
        "$p99" "$LAST_CPU" "$LAST_EFF" "${non2xx:-0}" "${sockerr:-none}" >>"$RAW"
}

# 3. HTTP/2: h2load, H2_CLIENTS connections with H2_STREAMS streams each, by name
# (SNI and :authority bench.example.test) at 127.0.0.1. Sets LAST_VAL and LAST_TLS
# (what h2load says it negotiated).
measure_h2() {
    local name=$1 port=$2 pid=$3 round=$4 out=$TMP/h2load-$1-$4.txt rps failed ok2xx
    begin_usage "$pid"
    if ! run client h2load -c "$H2_CLIENTS" -m "$H2_STREAMS" -t 1 -D "$DURATION" --warm-up-time="$WARMUP" \
        --tls13-ciphers="$SUITE" --groups="$GROUP" --connect-to="127.0.0.1:$port" \
        "https://$SNI:$port/" >"$out" 2>&1; then
        echo "tls: h2load against $name failed: $(tail -n 20 "$out")" >&2
        return 1
    fi
    kill -0 "$pid" 2>/dev/null || { echo "tls: $name died during the measurement" >&2; return 1; }
    end_usage "$name" "$pid" "$round" h2
    # The usage covers the warm-up too; it is load all the same.
    # "finished in 10.00s, 123456.70 req/s, 4.02MB/s"
    rps=$(awk '/^finished in/ { printf "%.0f", $4 }' "$out")
    # "requests: N total, N started, N done, N succeeded, 0 failed, 0 errored, 0 timeout"
    failed=$(awk '/^requests:/ { print $10 + $12 + $14 }' "$out")
    ok2xx=$(awk '/^status codes:/ { print $3 }' "$out")
    LAST_TLS=$(awk '/^TLS Protocol:/ { p = $3 } /^Cipher:/ { c = $2 } /^Server Temp Key:/ { g = $4 }
        /^Application protocol:/ { a = $3 } END { printf "%s %s %s %s", p ? p : "?", c ? c : "?", g ? g : "?", a ? a : "?" }' "$out")
    if [[ -z $rps || $LAST_TLS != *" h2" ]]; then
        echo "tls: h2load against $name did not speak HTTP/2 over TLS ($LAST_TLS): $(tail -n 20 "$out")" >&2
        return 1
    fi
    LAST_VAL=$rps
    LAST_EFF=$(eff "$rps")
    printf '  round %d  %-10s %7s req/s  %7s per proxy CPU-second  %s  failed: %s  2xx: %s  (%s)\n' "$round" "$name" \
        "$rps" "$LAST_EFF" "$USAGE" \
        "${failed:-?}" "${ok2xx:-?}" "$LAST_TLS"
    [[ -z $DISTURB ]] || echo "$DISTURB"
    printf '%s\th2\t%s\t%s\treq/s\t\t%s\t%s\tfailed %s\n' "$round" "$name" "$rps" "$LAST_CPU" "$LAST_EFF" \
        "${failed:-?}" >>"$RAW"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minimum() { sort -g | head -n1; }
maximum() { sort -g | tail -n1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
of() { tr ' ' '\n' <<<"$1" | grep .; } # the values of a space-separated list, one a line

haproxy_v=$( (haproxy -v 2>&1 || true) | awk 'NR == 1 { print $3 }')
haproxy_short=${haproxy_v%%-*} # 2.6.12-1+deb12u4 -> 2.6.12
nginx_v=$( (nginx -v 2>&1 || true) | sed 's/^nginx version: nginx\///')
declare -A LABEL=([gatehouse]="gatehouse serve" [haproxy]="HAProxy ${haproxy_short:-?}" [nginx]="nginx $nginx_v")
METRICS=(handshakes keep-alive h2)
declare -A MLABEL=([handshakes]="new handshakes/s" [keep-alive]="keep-alive HTTPS req/s" [h2]="HTTP/2 req/s")
DISTURBED=() # measurements during which something else ran on the proxy core
declare -A PORT PID FAILED RUN CPUS EFFS P99S TLSLINE

# ---------------------------------------------------------------- start
printf '\n== TLS termination: %s, each pinned to core %s ==\n' "${TARGETS[*]}" "$PROXY_CPU"
printf 'certificate: ECDSA P-256, self-signed, CN and SAN %s; clients: TLS 1.3, %s, %s only (%s)\n' \
    "$SNI" "$SUITE" "$GROUP" "OPENSSL_CONF=$CLIENT_CNF"
printf 'backend: nginx on core %s, return 200 "ok\\n", plain HTTP/1.1 with keep-alive from each proxy\n\n' "$CLIENT_CPU"

start_backend || die "the backend nginx did not start"
for t in "${TARGETS[@]}"; do
    PORT[$t]=$(free_port)
    if "start_${t/nginx/nginx_proxy}" "${PORT[$t]}"; then
        PID[$t]=$STARTED_PID
    else
        FAILED[$t]="did not start"
        [[ $t = gatehouse && -n $GH_PROBLEM ]] && FAILED[$t]=$GH_PROBLEM
    fi
done

# ---------------------------------------------------------------- check what is negotiated
printf 'negotiated (openssl s_client -servername %s -alpn h2, then -alpn http/1.1, with the clients'"'"' settings):\n' "$SNI"
declare -A NEG
for t in "${TARGETS[@]}"; do
    [[ -z ${FAILED[$t]:-} ]] || { printf '  %-16s FAILED: %s\n' "${LABEL[$t]}" "${FAILED[$t]}"; continue; }
    read -r proto cipher group sig alpn < <(negotiated "${PORT[$t]}" h2)
    read -r _ _ _ _ alpn1 < <(negotiated "${PORT[$t]}" http/1.1)
    read -r own_cipher own_group < <(server_choice "${PORT[$t]}")
    NEG[$t]="$proto $cipher $group $sig"
    TLSLINE[$t]="$proto, $cipher, $group, signature $sig, ALPN h2 -> $alpn, http/1.1 -> $alpn1"
    printf '  %-16s %s  (with OpenSSL'"'"'s default client offer it picks %s, %s)\n' "${LABEL[$t]}" "${TLSLINE[$t]}" \
        "$own_cipher" "$own_group"
    if [[ "$proto $cipher $group" != "TLSv1.3 $SUITE $GROUP" ]]; then
        echo "  !!!! ${LABEL[$t]} did not negotiate TLSv1.3 $SUITE $GROUP: its figures are not comparable !!!!"
        FAILED[$t]="negotiated $proto $cipher $group instead of TLSv1.3 $SUITE $GROUP"
    fi
    [[ $alpn = h2 ]] || echo "  note: ${LABEL[$t]} does not offer HTTP/2 (ALPN h2 -> $alpn); its HTTP/2 figure will fail"
done
distinct=$(for t in "${TARGETS[@]}"; do [[ -n ${NEG[$t]:-} ]] && echo "${NEG[$t]}"; done | sort -u | wc -l)
if (( distinct > 1 )); then
    echo
    echo "  !!!! WARNING: the proxies negotiated DIFFERENT parameters (see above); the comparison is not like for like !!!!"
fi

# ---------------------------------------------------------------- rounds
printf '\nper round, each proxy in turn (%s s warm-up, then %s s measured):\n' "$WARMUP" "$DURATION"
printf '  handshakes: %s (full handshakes, no resumption; each closes and reconnects)\n' "$HS_DESC"
printf '  keep-alive: wrk -t%s -c%s --latency -H "Host: %s" https://127.0.0.1:PORT/ (HTTP/1.1)\n' "$THREADS" \
    "$CONNECTIONS" "$SNI"
printf '  h2:         h2load -c %s -m %s -t 1 --tls13-ciphers=%s --groups=%s https://%s:PORT/\n' "$H2_CLIENTS" \
    "$H2_STREAMS" "$SUITE" "$GROUP" "$SNI"
printf 'all clients on core %s; proxy CPU is the proxy process'"'"'s CPU time as a share of one core.\n' "$CLIENT_CPU"

for ((r = 1; r <= ROUNDS; r++)); do
    for m in "${METRICS[@]}"; do
        printf '\nround %s/%s: %s\n' "$r" "$ROUNDS" "${MLABEL[$m]}"
        for t in "${TARGETS[@]}"; do
            [[ -z ${FAILED[$t]:-} && -z ${FAILED[$t.$m]:-} ]] || continue
            if "measure_${m/keep-alive/keepalive}" "$t" "${PORT[$t]}" "${PID[$t]}" "$r"; then
                RUN[$t.$m]+="$LAST_VAL "
                CPUS[$t.$m]+="$LAST_CPU "
                EFFS[$t.$m]+="$LAST_EFF "
                [[ $m = keep-alive ]] && P99S[$t]+="$LAST_P99 "
                if [[ $m = h2 && "$LAST_TLS" != "TLSv1.3 $SUITE $GROUP h2" ]]; then
                    echo "  !!!! WARNING: h2load negotiated $LAST_TLS with ${LABEL[$t]}, not TLSv1.3 $SUITE $GROUP h2 !!!!"
                fi
            else
                FAILED[$t.$m]="failed in round $r (see above)"
                kill -0 "${PID[$t]}" 2>/dev/null || FAILED[$t]="died in round $r"
            fi
        done
    done
done

# ---------------------------------------------------------------- table
declare -A MED RANGE CPUMED
for t in "${TARGETS[@]}"; do
    for m in "${METRICS[@]}"; do
        [[ -n ${RUN[$t.$m]:-} && -z ${FAILED[$t.$m]:-} ]] || continue
        MED[$t.$m]=$(of "${RUN[$t.$m]}" | median | awk '{ printf "%.0f", $1 }')
        RANGE[$t.$m]="$(of "${RUN[$t.$m]}" | minimum)-$(of "${RUN[$t.$m]}" | maximum)"
        CPUMED[$t.$m]=$(of "${CPUS[$t.$m]}" | median | awk '{ printf "%.0f", $1 }')
        MED[$t.$m.eff]=$(of "${EFFS[$t.$m]}" | median | awk '{ printf "%.0f", $1 }')
        RANGE[$t.$m.eff]="$(of "${EFFS[$t.$m]}" | minimum)-$(of "${EFFS[$t.$m]}" | maximum)"
    done
    if [[ -n ${P99S[$t]:-} && -z ${FAILED[$t.keep-alive]:-} ]]; then
        MED[$t.p99]=$(of "${P99S[$t]}" | median)
        RANGE[$t.p99]="$(of "${P99S[$t]}" | minimum)-$(of "${P99S[$t]}" | maximum)"
    fi
done

cell() { # median [min-max] and the proxy's CPU (for the rates), or FAILED
    local t=$1 k=$2
    if [[ -n ${FAILED[$t]:-} ]]; then
        echo "FAILED"
    elif [[ -n ${MED[$t.$k]:-} ]]; then
        if [[ -n ${CPUMED[$t.$k]:-} ]]; then echo "${MED[$t.$k]} [${RANGE[$t.$k]}] ${CPUMED[$t.$k]}%"; else echo "${MED[$t.$k]} [${RANGE[$t.$k]}]"; fi
    else
        echo "FAILED"
    fi
}

results_table() {
    local m t peer row hdr verdict
    hdr=$(printf '  %-26s' metric)
    for t in "${TARGETS[@]}"; do hdr+=$(printf ' %-27s' "${LABEL[$t]}"); done
    has gatehouse && has haproxy && hdr+=$(printf ' %-9s' "gh/HAProxy")
    has gatehouse && has nginx && hdr+=$(printf ' %-9s' "gh/nginx")
    echo "$hdr"
    for m in handshakes handshakes.eff keep-alive keep-alive.eff p99 h2 h2.eff; do
        case $m in
            p99) row=$(printf '  %-26s' "keep-alive p99 ms") ;;
            *.eff) row=$(printf '  %-26s' "  per proxy CPU-second") ;;
            *) row=$(printf '  %-26s' "${MLABEL[$m]}") ;;
        esac
        for t in "${TARGETS[@]}"; do row+=$(printf ' %-27s' "$(cell "$t" "$m")"); done
        for peer in haproxy nginx; do
            { has gatehouse && has "$peer"; } || continue
            row+=$(printf ' %-9s' "$(ratio "${MED[gatehouse.$m]:-}" "${MED[$peer.$m]:-}")")
        done
        echo "$row"
    done
    has gatehouse && has haproxy || return 0
    echo
    for m in "${METRICS[@]}"; do
        if [[ -z ${MED[gatehouse.$m]:-} || -z ${MED[haproxy.$m]:-} ]]; then
            verdict="not measured"
        elif awk -v g="${MED[gatehouse.$m]}" -v h="${MED[haproxy.$m]}" 'BEGIN { exit !(g >= h) }'; then
            verdict="met"
        else
            verdict="missed"
        fi
        verdict+=" (ratio $(ratio "${MED[gatehouse.$m]}" "${MED[haproxy.$m]}"), per proxy CPU-second"
        verdict+=" $(ratio "${MED[gatehouse.$m.eff]:-}" "${MED[haproxy.$m.eff]:-}"))"
        printf '  target (>= HAProxy) %-24s %s\n' "${MLABEL[$m]}:" "$verdict"
    done
}

printf '\nmedian of %s rounds [min-max] and the proxy'"'"'s median CPU (ratios: gatehouse median / other median; above 1 is gatehouse ahead, except p99):\n' "$ROUNDS"
results_table

# ---------------------------------------------------------------- summary
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
wrk_v=$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')
h2load_v=$( (h2load --version 2>&1 || true) | awk 'NR == 1 { print $2 }')
openssl_v=$(openssl version | awk '{ print $2 }')
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | head -c1)
[[ -n $dirty ]] && dirty=" (working tree has uncommitted changes)"
elapsed=$(($(date +%s) - STARTED))

summary=$(cat <<EOF

==== tls summary ====
one proxy core each, ECDSA P-256 certificate, clients TLS 1.3 $SUITE $GROUP; $HS_DESC, wrk -t$THREADS -c$CONNECTIONS, h2load -c$H2_CLIENTS -m$H2_STREAMS; ${DURATION}s x $ROUNDS rounds, median [min-max] proxy CPU:
$(results_table)
negotiated:
$(for t in "${TARGETS[@]}"; do printf '  %-16s %s\n' "${LABEL[$t]}" "${TLSLINE[$t]:-FAILED: ${FAILED[$t]:-?}}"; done)
$(if ((${#DISTURBED[@]})); then echo "  disturbed (other load on the proxy core):"; printf '    %s\n' "${DISTURBED[@]}"; fi)
machine: $ncpu CPU ($cpu), kernel $(uname -r), OpenSSL $openssl_v, HAProxy ${haproxy_v:-?}, nginx $nginx_v, wrk $wrk_v, h2load $h2load_v
gatehouse $rev$dirty; bench/tls.sh took ${elapsed}s
EOF
)
echo
grep -v '^$' <<<"$summary"
if [[ -n $RESULTS ]]; then
    file=$RESULTS/tls-$(date +%Y%m%d-%H%M%S).tsv
    cp "$RAW" "$file"
    grep -v '^$' <<<"$summary" | sed 's/^/# /' >>"$file"
    say "raw figures written to $file"
fi

failed=0
for t in "${TARGETS[@]}"; do
    [[ -z ${FAILED[$t]:-} ]] || failed=1
    for m in "${METRICS[@]}"; do [[ -z ${FAILED[$t.$m]:-} ]] || failed=1; done
done
exit "$failed"
