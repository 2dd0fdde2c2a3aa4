#!/usr/bin/env bash
# bench/kernel-lb.sh: the kernel load balancer, the seed's iptables rules against
# gatehouse's nftables map.
#
# 1. New TCP connections per second through the lab gateway namespace, for each N
#    in $BACKENDS web servers: A = the seed's `statistic --mode nth` DNAT chain
#    generalised to N backends (iptables-legacy), B = `gatehouse apply` (one nft
#    table, DNAT through a numgen map). A and B alternate, A B A B ..., so drift
#    (thermal, page cache, a noisy neighbour) falls on both sides alike.
# 2. Wall time of `gatehouse apply` for 1,000 backends (fresh, unchanged, one
#    removed) and for Maglev tables (65,537 slots), next to iptables-legacy-restore
#    loading the seed-style chain for 1,000 backends.
#
# Run as root on Debian: sudo bench/kernel-lb.sh. Everything it creates lives in
# network namespaces named ghb<pid>..., removed on exit (also on Ctrl-C or error).
# See bench/README.md for how to read the output.
set -euo pipefail

BACKENDS=${BACKENDS:-"2 16 64"}        # web servers per lab, one lab each
DURATION=${DURATION:-10}               # seconds per wrk measurement
WARMUP=${WARMUP:-2}                    # seconds of unmeasured load before each measurement
ROUNDS=${ROUNDS:-3}                    # A/B pairs per N (at least 2)
THREADS=${THREADS:-2}                  # wrk -t
CONNECTIONS=${CONNECTIONS:-64}         # wrk -c
APPLY_BACKENDS=${APPLY_BACKENDS:-1000} # backends in the apply-time configs
APPLY_REPS=${APPLY_REPS:-3}            # repetitions per apply-time figure

VIP=198.51.100.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_ID=$$
STARTED=$(date +%s)

die() { echo "kernel-lb: error: $*" >&2; exit 1; }
say() { echo "kernel-lb: $*"; }

[[ $(id -u) -eq 0 ]] || die "run as root (network namespaces, nftables and iptables need it): sudo $0"
(( ROUNDS >= 2 )) || die "ROUNDS must be at least 2 (got $ROUNDS)"
for n in $BACKENDS; do
    [[ $n =~ ^[0-9]+$ ]] && (( n >= 1 && n <= 240 )) || die "BACKENDS: $n is not a number from 1 to 240"
done
(( APPLY_BACKENDS >= 2 && APPLY_BACKENDS <= 60000 )) || die "APPLY_BACKENDS must be from 2 to 60000"

# ---------------------------------------------------------------- cleanup
CURRENT_LAB=  # the lab that is up, if any
SCRATCH=()    # scratch namespaces to delete
TMP=$(mktemp -d /tmp/gatehouse-kernel-lb.XXXXXX)

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CURRENT_LAB ]]; then
        "${GH:-false}" lab down --name "$CURRENT_LAB" >/dev/null 2>&1 ||
            echo "kernel-lb: warning: could not take lab $CURRENT_LAB down; try: gatehouse lab down --name $CURRENT_LAB" >&2
    fi
    for ns in "${SCRATCH[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "kernel-lb: error: line $LINENO failed: $BASH_COMMAND" >&2' ERR
trap 'echo; echo "kernel-lb: interrupted, cleaning up" >&2; exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- prerequisites
need=()
command -v nft >/dev/null || need+=(nftables)
command -v iptables-legacy-restore >/dev/null || need+=(iptables)
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v conntrack >/dev/null || need+=(conntrack)
if (( ${#need[@]} )); then
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them with"
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [[ -n ${GATEHOUSE_BIN:-} ]]; then
    GH=$GATEHOUSE_BIN
else
    say "building gatehouse (cargo build --release -p gatehouse in $ROOT)"
    (cd "$ROOT" && cargo build --release -p gatehouse --quiet) || die "cargo build failed"
    target=${CARGO_TARGET_DIR:-target}
    [[ $target = /* ]] || target=$ROOT/$target
    GH=$target/release/gatehouse
fi
[[ -x $GH ]] || die "no gatehouse binary at $GH"

# ---------------------------------------------------------------- helpers
now_ns() { date +%s%N; }

# median of the numbers on stdin
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minimum() { sort -g | head -n1; }
maximum() { sort -g | tail -n1; }

# seconds (float) -> "0.123 s"
secs() { awk -v s="$1" 'BEGIN { printf "%.3f s", s }'; }

# The seed's rules for N backends, as iptables-restore input. $1 = N, $2 = "lab"
# (10.0.0.11.., the lab's web servers) or "wide" (10.0.1.1.., see backend_addr).
seed_rules() {
    local n=$1 i addr every
    echo "*nat"
    echo ":PREROUTING ACCEPT [0:0]"
    echo ":INPUT ACCEPT [0:0]"
    echo ":OUTPUT ACCEPT [0:0]"
    echo ":POSTROUTING ACCEPT [0:0]"
    # Rule i sees the connections rules 0..i-1 did not take; every (N-i)th of
    # them makes each backend get exactly 1/N. The last rule takes the rest.
    for ((i = 0; i < n; i++)); do
        addr=$(backend_addr "$2" "$i")
        every=$((n - i))
        if (( every > 1 )); then
            echo "-A PREROUTING -i eth0 -p tcp -m tcp --dport 80 -m statistic --mode nth --every $every --packet 0 -j DNAT --to-destination $addr:80"
        else
            echo "-A PREROUTING -i eth0 -p tcp -m tcp --dport 80 -j DNAT --to-destination $addr:80"
        fi
    done
    echo "-A POSTROUTING -o eth0 -j MASQUERADE"
    echo "COMMIT"
    echo "*filter"
    echo ":INPUT ACCEPT [0:0]"
    echo ":FORWARD DROP [0:0]"
    echo ":OUTPUT ACCEPT [0:0]"
    # The seed: replies from the web servers, then new connections to each web
    # server; in between, the established-traffic rule of the default Fedora
    # firewall the seed started from (gatehouse's forward chain has the same).
    echo "-A FORWARD -p tcp -m tcp --sport 80 -j ACCEPT"
    echo "-A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT"
    for ((i = 0; i < n; i++)); do
        echo "-A FORWARD -d $(backend_addr "$2" "$i")/32 -p tcp -m tcp --dport 80 -j ACCEPT"
    done
    echo "COMMIT"
}

# Address of backend i (0-based). "lab": 10.0.0.11.. as `gatehouse lab` numbers
# its web servers. "wide": 10.0.1.1, 10.0.1.2, ... 250 per /24, inside 10.0.0.0/16.
backend_addr() {
    if [[ $1 = lab ]]; then
        echo "10.0.0.$((11 + $2))"
    else
        echo "10.0.$((1 + $2 / 250)).$((1 + $2 % 250))"
    fi
}

# Empty legacy tables with ACCEPT policies: what "no iptables rules" looks like.
empty_legacy_tables() {
    printf '*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n'
    printf '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n'
}

# A gatehouse config: $1 = number of backends, $2 = balance, $3 = index to leave out (optional).
farm_config() {
    local n=$1 balance=$2 skip=${3:--1} i
    cat <<EOF
# written by bench/kernel-lb.sh
[gateway]
wan = "eth0"
lan = "eth1"
lan_subnet = "10.0.0.0/16"
masquerade = true
admin = ["192.168.2.0/24"]
ssh_port = 22
ping = true

[[service]]
name = "web"
listen = "80"
mode = "nat"
balance = "$balance"
backends = [
EOF
    for ((i = 0; i < n; i++)); do
        (( i == skip )) || echo "  \"$(backend_addr wide "$i"):80\","
    done
    echo "]"
}

# Sum of conntrack's drop counters (drop, early_drop, insert_failed) in a namespace.
conntrack_drops() {
    if command -v conntrack >/dev/null; then
        ip netns exec "$1" conntrack -S 2>/dev/null |
            awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "drop" || kv[1] == "early_drop" || kv[1] == "insert_failed") s += kv[2] } } END { print s + 0 }'
    else
        echo 0
    fi
}

# ---------------------------------------------------------------- part 1: conn/s
# Switch the lab gateway to side A (seed iptables-legacy) or B (gatehouse nft).
use_seed() {
    local lab=$1 n=$2 gw=$1-gw
    "$GH" --netns "$gw" --state-dir "$RUNDIR/state" down >>"$TMP/gatehouse.log" 2>&1 || true
    if ip netns exec "$gw" nft list table inet gatehouse >/dev/null 2>&1; then
        die "table inet gatehouse is still in $gw after gatehouse down"
    fi
    seed_rules "$n" lab >"$TMP/seed-$n.rules"
    ip netns exec "$gw" iptables-legacy-restore <"$TMP/seed-$n.rules"
    ip netns exec "$gw" sysctl -q -w net.ipv4.ip_forward=1
}

use_gatehouse() {
    local lab=$1 gw=$1-gw
    ip netns exec "$gw" iptables-legacy-restore < <(empty_legacy_tables)
    if ! "$GH" --netns "$gw" --state-dir "$RUNDIR/state" apply -c "$RUNDIR/gatehouse.toml" >>"$TMP/gatehouse.log" 2>&1; then
        tail -n 20 "$TMP/gatehouse.log" >&2
        die "gatehouse apply failed on $gw"
    fi
    local left
    left=$(ip netns exec "$gw" iptables-legacy-save | grep -c '^-A' || true)
    (( left == 0 )) || die "$left iptables-legacy rules left in $gw"
}

# N connections in a row must reach all N web servers (both methods are exact round-robin).
verify() {
    local lab=$1 n=$2 side=$3 urls=() i seen
    for ((i = 0; i < n; i++)); do urls+=("http://$VIP/"); done
    seen=$(ip netns exec "$lab-client" curl -s --max-time 10 -H 'Connection: close' "${urls[@]}" |
        grep -o 'My Website Number [0-9]*' | sort -u | wc -l) || true
    if (( seen != n )); then
        die "$side with N=$n: $n connections reached $seen distinct web servers, expected $n"
    fi
}

# One measurement: prints a line and sets LAST_RPS (conn/s).
LAST_RPS=
measure() {
    local lab=$1 n=$2 side=$3 round=$4 out rps non2xx sockerr drops0 drops1 ctcount
    local client=$lab-client gw=$lab-gw
    verify "$lab" "$n" "$side"
    ip netns exec "$client" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -H 'Connection: close' "http://$VIP/" >/dev/null 2>&1 || true
    command -v conntrack >/dev/null && ip netns exec "$gw" conntrack -F >/dev/null 2>&1 || true
    drops0=$(conntrack_drops "$gw")
    out=$TMP/wrk-$n-$side-$round.txt
    ip netns exec "$client" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s \
        -H 'Connection: close' "http://$VIP/" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    drops1=$(conntrack_drops "$gw")
    ctcount=$(ip netns exec "$gw" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo "?")
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    [[ -n $rps ]] || die "no Requests/sec in wrk output: $(cat "$out")"
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(awk -F': ' '/Socket errors:/ { print $2 }' "$out")
    printf '  N=%-3s round %d  %-14s %8s conn/s   non-2xx: %s  socket errors: %s  conntrack drops: %s  (entries after: %s)\n' \
        "$n" "$round" "$side" "$rps" "${non2xx:-0}" "${sockerr:-none}" "$((drops1 - drops0))" "$ctcount"
    LAST_RPS=$rps
}

printf '\n== part 1: new connections per second through the gateway ==\n'
printf 'wrk -t%s -c%s -H "Connection: close" http://%s/ from the client namespace, %ss per measurement after %ss warm-up,\n' \
    "$THREADS" "$CONNECTIONS" "$VIP" "$DURATION" "$WARMUP"
printf '%s rounds of A = seed iptables (iptables-legacy, nth chain), B = gatehouse nft (numgen map), alternating A B A B.\n' "$ROUNDS"
printf 'conntrack is flushed on the gateway before each measurement; nf_conntrack_max = %s (host-wide, left alone).\n\n' \
    "$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo '?')"

declare -A MED_A MED_B RANGE_A RANGE_B RATIO
for n in $BACKENDS; do
    lab=ghb${RUN_ID}n$n
    CURRENT_LAB=$lab
    RUNDIR=/run/gatehouse/lab-$lab
    if ! "$GH" lab up --no-apply --name "$lab" --backends "$n" --web nginx >"$TMP/lab-$n.log" 2>&1; then
        cat "$TMP/lab-$n.log" >&2
        die "gatehouse lab up failed for N=$n"
    fi
    [[ -f $RUNDIR/gatehouse.toml ]] || die "lab $lab has no config at $RUNDIR/gatehouse.toml"
    # Connection: close at thousands per second: let the client use more ports and
    # reuse TIME_WAIT ones (both per-namespace settings).
    ip netns exec "$lab-client" sysctl -q -w net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
    a=() b=()
    for ((r = 1; r <= ROUNDS; r++)); do
        use_seed "$lab" "$n"
        measure "$lab" "$n" seed-iptables "$r"
        a+=("$LAST_RPS")
        use_gatehouse "$lab"
        measure "$lab" "$n" gatehouse-nft "$r"
        b+=("$LAST_RPS")
    done
    MED_A[$n]=$(printf '%s\n' "${a[@]}" | median | awk '{ printf "%.0f", $1 }')
    MED_B[$n]=$(printf '%s\n' "${b[@]}" | median | awk '{ printf "%.0f", $1 }')
    RANGE_A[$n]="$(printf '%s\n' "${a[@]}" | minimum)-$(printf '%s\n' "${a[@]}" | maximum)"
    RANGE_B[$n]="$(printf '%s\n' "${b[@]}" | minimum)-$(printf '%s\n' "${b[@]}" | maximum)"
    RATIO[$n]=$(awk -v a="${MED_A[$n]}" -v b="${MED_B[$n]}" 'BEGIN { printf "%.2f", b / a }')
    "$GH" lab down --name "$lab" >>"$TMP/gatehouse.log" 2>&1 || die "gatehouse lab down --name $lab failed"
    CURRENT_LAB=
done

conn_table() {
    printf '  %-4s %-30s %-30s %s\n' N "seed iptables-legacy conn/s" "gatehouse nft conn/s" "ratio (gatehouse/iptables)"
    for n in $BACKENDS; do
        printf '  %-4s %-30s %-30s %s\n' "$n" "${MED_A[$n]} [${RANGE_A[$n]}]" "${MED_B[$n]} [${RANGE_B[$n]}]" "${RATIO[$n]}"
    done
}
printf '\nmedian of %s rounds [min-max]:\n' "$ROUNDS"
conn_table

# ---------------------------------------------------------------- part 2: apply time
printf '\n== part 2: time to install the ruleset (wall time, median of %s) ==\n' "$APPLY_REPS"
NS=ghb${RUN_ID}s
SCRATCH+=("$NS")
ip netns add "$NS"
# Two interfaces for gatehouse's checks (they must exist; backends must be in
# eth1's subnet). Dummy interfaces if the kernel has them, else veth pairs whose
# both ends stay in the scratch namespace.
LINK_KIND=dummy
if ! ip -n "$NS" link add eth0 type dummy 2>/dev/null; then
    LINK_KIND="veth (both ends in the namespace; this kernel has no dummy interfaces)"
    ip -n "$NS" link add eth0 type veth peer name eth0p
    ip -n "$NS" link add eth1 type veth peer name eth1p
    ip -n "$NS" link set eth0p up
    ip -n "$NS" link set eth1p up
else
    ip -n "$NS" link add eth1 type dummy
fi
ip -n "$NS" addr add 198.51.100.1/24 dev eth0
ip -n "$NS" addr add 10.0.0.1/16 dev eth1
ip -n "$NS" link set lo up
ip -n "$NS" link set eth0 up
ip -n "$NS" link set eth1 up
echo "scratch namespace $NS: eth0 198.51.100.1/24, eth1 10.0.0.1/16, $LINK_KIND"

K=$APPLY_BACKENDS
farm_config "$K" round-robin >"$TMP/rr.toml"
farm_config "$K" round-robin $((K / 2)) >"$TMP/rr-minus-one.toml"
farm_config 16 maglev >"$TMP/maglev16.toml"
farm_config "$K" maglev >"$TMP/maglev.toml"
farm_config "$K" maglev $((K / 2)) >"$TMP/maglev-minus-one.toml"
seed_rules "$K" wide >"$TMP/seed-wide.rules"
STATE=$TMP/apply-state

gh() { "$GH" --netns "$NS" --state-dir "$STATE" "$@" >>"$TMP/gatehouse.log" 2>&1 || { tail -n 20 "$TMP/gatehouse.log" >&2; die "gatehouse $* failed"; }; }


# $1 = label, $2 = setup command (untimed, a function name or ":"), rest = timed command.
declare -a APPLY_LINES=()
apply_figure() {
    local label=$1 setup=$2 times=() i t0 t1
    shift 2
    for ((i = 0; i < APPLY_REPS; i++)); do
        $setup
        t0=$(now_ns)
        "$@"
        t1=$(now_ns)
        times+=("$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.4f", d / 1e9 }')")
    done
    local med min max
    med=$(printf '%s\n' "${times[@]}" | median)
    min=$(printf '%s\n' "${times[@]}" | minimum)
    max=$(printf '%s\n' "${times[@]}" | maximum)
    local line
    line=$(printf '  %-70s %s  [%s-%s]' "$label" "$(secs "$med")" "$(awk -v s="$min" 'BEGIN { printf "%.3f", s }')" "$(awk -v s="$max" 'BEGIN { printf "%.3f", s }')")
    echo "$line"
    APPLY_LINES+=("$line")
}

no_table() { gh down; ip netns exec "$NS" nft delete table inet gatehouse 2>/dev/null || true; }
rr_full() { gh apply -c "$TMP/rr.toml"; }
maglev_full() { gh apply -c "$TMP/maglev.toml"; }
legacy_empty() { ip netns exec "$NS" iptables-legacy-restore < <(empty_legacy_tables); }
nft_raw() { ip netns exec "$NS" nft -f "$1" >>"$TMP/gatehouse.log" 2>&1; }

"$GH" plan --offline -c "$TMP/rr.toml" >"$TMP/rr.nft" 2>>"$TMP/gatehouse.log"
"$GH" plan --offline -c "$TMP/maglev.toml" >"$TMP/maglev.nft" 2>>"$TMP/gatehouse.log"

echo "  (figure in seconds, then [min-max])"
apply_figure "gatehouse apply, $K backends round-robin, no table before" no_table gh apply -c "$TMP/rr.toml"
apply_figure "gatehouse apply, $K backends round-robin, unchanged re-apply" rr_full gh apply -c "$TMP/rr.toml"
apply_figure "gatehouse apply, $K backends round-robin, one backend removed" rr_full gh apply -c "$TMP/rr-minus-one.toml"
apply_figure "  for reference: nft -f of that ruleset alone, no table before" no_table nft_raw "$TMP/rr.nft"
apply_figure "iptables-legacy-restore, seed nth chain for $K backends" legacy_empty ip netns exec "$NS" iptables-legacy-restore "$TMP/seed-wide.rules"
legacy_empty
apply_figure "gatehouse apply, Maglev 65,537 slots, 16 backends, no table before" no_table gh apply -c "$TMP/maglev16.toml"
apply_figure "gatehouse apply, Maglev 65,537 slots, $K backends, no table before" no_table gh apply -c "$TMP/maglev.toml"
apply_figure "gatehouse apply, Maglev, $K backends, one backend removed" maglev_full gh apply -c "$TMP/maglev-minus-one.toml"
apply_figure "  for reference: nft -f of the Maglev ruleset alone, no table before" no_table nft_raw "$TMP/maglev.nft"
no_table

# ---------------------------------------------------------------- summary
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
wrk_v=$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')
nginx_v=$( (nginx -v 2>&1 || true) | sed 's/^nginx version: //')
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | head -c1)
[[ -n $dirty ]] && dirty=" (working tree has uncommitted changes)"
elapsed=$(( $(date +%s) - STARTED ))

cat <<EOF

==== kernel-lb summary ====
new TCP connections/s through the gateway namespace (wrk -t$THREADS -c$CONNECTIONS, Connection: close,
${DURATION}s x $ROUNDS rounds per side, alternating; median [min-max]):
$(conn_table)
time to install (wall, median of $APPLY_REPS [min-max], seconds):
$(printf '%s\n' "${APPLY_LINES[@]}")
seed side = iptables-legacy $(iptables-legacy -V | awk '{ print $2 }') (the seed's era), nth DNAT chain + per-backend FORWARD accepts
machine: $(nproc) CPU ($cpu), kernel $(uname -r), nft $(nft -v | awk '{ print $2 }'), $nginx_v, wrk $wrk_v
gatehouse $rev$dirty; bench/kernel-lb.sh took ${elapsed}s
EOF
