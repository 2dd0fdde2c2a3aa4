#!/usr/bin/env bash
# The test command (README.md): installs what the tests need when it is missing
# (Debian packages), then runs every test in the workspace. Needs root: the
# end-to-end tests build network namespaces and install nftables rules in them.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p gatehouse-config).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the tests build network namespaces; run as root (sudo scripts/test.sh)" >&2
    exit 2
fi

# command the tests run -> the Debian package that provides it
packages=(
    nft:nftables iptables-restore:iptables ip:iproute2 nginx:nginx-light curl:curl
    nmap:nmap conntrack:conntrack socat:socat ping:iputils-ping unshare:util-linux sysctl:procps
    wrk:wrk openssl:openssl rsyslogd:rsyslog zstd:zstd logger:bsdutils restic:restic
    chromium:chromium chromedriver:chromium-driver base64:coreutils
)
missing=()
for entry in "${packages[@]}"; do
    command="${entry%%:*}" package="${entry#*:}"
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$command" >/dev/null 2>&1; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    # Keep package scripts from starting daemons (nginx on the host's port 80):
    # the tests start their own, inside namespaces.
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=$policy
        trap 'rm -f "$ours"' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$ours" ]; then rm -f "$ours"; fi
    trap - EXIT
fi

exec cargo test --workspace --locked "$@"
