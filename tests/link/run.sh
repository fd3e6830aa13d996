#!/usr/bin/env bash
# Link DNS with real parts: NetworkManager tells dns-proxy a DHCP lease's DNS server and search
# domains over org.freedesktop.resolve1, resolvectl reads and changes them, and only names under
# those domains ever reach the link's server.
#
#   tests/link/run.sh [BINARY]      (as root; default: `cargo build` and target/debug/dns-proxy)
#
# The world, torn down at exit, and nothing outside it:
#
#   private dbus-daemon (system bus type) on a socket in the work directory, with NetworkManager's
#   policy and dns-proxy's packaged one (packaging/dbus/, its user being the test's daemon user)
#
#   netns "srv"  veth 10.77.0.1/24  dnsmasq: DHCP server handing out DNS server 10.77.0.1 and the
#                                   search domains corp.example and lab.example; DNS server for
#                                   those (and extra.example), logging every query it sees
#   netns "cli"  veth eth0          NetworkManager (Debian's, /sys read-only so that it does not
#                                   wait for udev; the packaged drop-in packaging/NetworkManager/)
#                                   managing eth0 by DHCP;
#                127.0.0.1:53       dns-proxy as uid 65534, link_dns at its default "domains";
#                127.0.0.1:853      its DNS-over-TLS upstream (unbound, private CA), answering
#                                   every other name (and, as a leak detector, names under the
#                                   link's domains with other addresses than dnsmasq's)
#
#   resolvectl from Debian's systemd-resolved package, unpacked with the libsystemd-shared of the
#   same version, never installed (the package would take the bus name and /etc/resolv.conf).
#
# Prints one PASS/FAIL line per check with its timings; exits non-zero if one fails. Bounded:
# every wait has its own limit and the whole run stops after $deadline seconds. With
# DNS_PROXY_LINK_TEST_KEEP=1 the work directory and its logs are kept.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
deadline=240

skip() {
    # On CI a test that cannot run is a failure, not a skip.
    [[ -z ${CI:-} ]] || die "$*"
    echo "link test: SKIPPED: $*"
    exit 0
}
die() {
    echo "link test: ERROR: $*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || skip "needs root for network namespaces"
for tool in NetworkManager nmcli dnsmasq dbus-daemon unbound openssl dig ip nsenter unshare setpriv apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || skip "$tool is not installed"
done

binary=${1:-}
if [[ -z $binary ]]; then
    (cd "$repo" && cargo build --locked -q) || die "cargo build failed"
    binary=${CARGO_TARGET_DIR:-$repo/target}/debug/dns-proxy
fi
[[ -x $binary ]] || die "$binary is not an executable"

work=$(mktemp -d /tmp/dns-proxy-link.XXXXXX)
# The daemon runs as nobody: it must reach its binary, configuration and run directory.
chmod 0755 "$work"
srv=dplink-srv-$$
cli=dplink-cli-$$
pids=()
cleanup() {
    local pid
    # Every process in the test's namespaces is one it started, and so are the others in pids.
    local -a inside
    mapfile -t inside < <(ip netns pids "$cli" 2>/dev/null; ip netns pids "$srv" 2>/dev/null)
    pids+=("${inside[@]}")
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$srv" 2>/dev/null || true
    ip netns del "$cli" 2>/dev/null || true
    if [[ -n ${DNS_PROXY_LINK_TEST_KEEP:-} ]]; then
        echo "link test: logs kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'echo "link test: ERROR: line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR
# The whole run is bounded: the watchdog ends it (and the trap cleans up).
(sleep "$deadline" && echo "link test: ERROR: still running after $deadline s" >&2 && kill -TERM $$) 2>/dev/null &
watchdog=$!
pids+=("$watchdog")

failed=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() {
    printf 'FAIL  %s\n' "$*"
    failed=1
}
now() { echo "${EPOCHREALTIME/./}"; } # microseconds
ms_since() { echo $((($(now) - $1) / 1000)); }
# Runs a command in a namespace; nsenter execs it, so "$!" of one started in the background is
# the command's own process.
in_cli() { nsenter --net="/run/netns/$cli" "$@"; }
in_srv() { nsenter --net="/run/netns/$srv" "$@"; }

# --- resolvectl, unpacked -------------------------------------------------------------------
mkdir -p "$work/resolved"
(cd "$work/resolved" && { apt-get download -q systemd-resolved libsystemd-shared >"$work/download.log" 2>&1 ||
    { apt-get update -q >>"$work/download.log" 2>&1 && apt-get download -q systemd-resolved libsystemd-shared \
        >>"$work/download.log" 2>&1; }; }) || { cat "$work/download.log"; die "apt-get download systemd-resolved failed"; }
for deb in "$work"/resolved/*.deb; do dpkg-deb -x "$deb" "$work/resolved/root"; done
# Its own libsystemd-shared first: resolvectl needs the one of its exact version, which the
# host's may not be.
shared_dir=$(dirname "$(find "$work/resolved/root" -name 'libsystemd-shared-*.so' | head -n 1)")
mkdir -p "$work/bin"
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$shared_dir" "$work/resolved/root/usr/bin/resolvectl" >"$work/bin/resolvectl"
chmod 0755 "$work/bin/resolvectl"
resolvectl=$work/bin/resolvectl
resolvectl_version=$("$resolvectl" --version | head -n 1) || die "the unpacked resolvectl does not run"

# --- the private system bus -----------------------------------------------------------------
daemon_user=nobody
daemon_uid=$(id -u "$daemon_user")
# Anyone else: neither root nor the daemon's user (the bus admits only users it knows).
other_user=daemon
other_uid=$(id -u "$other_user")
mkdir -p "$work/dbus"
cp /usr/share/dbus-1/system.d/org.freedesktop.NetworkManager.conf "$work/dbus/"
sed "s/user=\"dns-proxy\"/user=\"$daemon_user\"/" "$repo/packaging/dbus/dns-proxy-resolve1.conf" \
    >"$work/dbus/dns-proxy-resolve1.conf"
grep -q "user=\"$daemon_user\"" "$work/dbus/dns-proxy-resolve1.conf" || die "no user= in the packaged D-Bus policy"
# What the system bus's own configuration (system.conf) says by default: nobody owns a name or
# calls a method unless a policy file says so.
cat >"$work/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$work/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <includedir>$work/dbus</includedir>
</busconfig>
EOF
dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile >"$work/bus.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    [[ -S $work/bus ]] && break
    sleep 0.1
done
[[ -S $work/bus ]] || { cat "$work/bus.log"; die "dbus-daemon did not start"; }
chmod 0666 "$work/bus"
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$work/bus

# --- the network ----------------------------------------------------------------------------
ip netns add "$srv"
ip netns add "$cli"
ip link add lan0 netns "$srv" type veth peer name eth0 netns "$cli"
ip -n "$srv" link set lo up
ip -n "$cli" link set lo up
ip -n "$srv" addr add 10.77.0.1/24 dev lan0
ip -n "$srv" link set lan0 up
# dns-proxy binds port 53 as nobody, in this namespace only.
in_cli sysctl -qw net.ipv4.ip_unprivileged_port_start=53

# --- dnsmasq: the network's DHCP and DNS server ---------------------------------------------
link_server=10.77.0.1
corp_answer=198.51.100.1  # dnsmasq's answer for any name under corp.example
lab_answer=198.51.100.2   # ... lab.example
extra_answer=198.51.100.3 # ... extra.example (a routing domain added with resolvectl)
home_answer=198.51.100.4  # ... home.arpa (a LAN's domain, a local zone of dns-proxy's own)
cat >"$work/lease-event" <<EOF
#!/bin/bash
# dnsmasq runs this on every lease change: the time the lease was granted.
[[ \$1 == add || \$1 == old ]] && echo "\$EPOCHREALTIME \$1 \$3" >>$work/lease-events
exit 0
EOF
chmod 0755 "$work/lease-event"
nsenter --net="/run/netns/$srv" dnsmasq --keep-in-foreground --user=root --no-resolv --no-hosts --bind-interfaces --interface=lan0 \
    --dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,10m --dhcp-option=option:router,$link_server \
    --dhcp-option=option:dns-server,$link_server --dhcp-option=option:domain-search,corp.example,lab.example,home.arpa \
    --dhcp-leasefile="$work/dnsmasq.leases" --dhcp-script="$work/lease-event" \
    --local-ttl=300 --address=/corp.example/$corp_answer --address=/lab.example/$lab_answer --address=/extra.example/$extra_answer \
    --address=/home.arpa/$home_answer \
    --log-queries --log-facility="$work/dnsmasq.log" --pid-file="$work/dnsmasq.pid" 2>"$work/dnsmasq.err" &
pids+=($!)
# Every name dnsmasq was asked, one per line.
link_server_saw() { sed -n 's/.* query\[[A-Z0-9]*\] \([^ ]*\) from .*/\1/p' "$work/dnsmasq.log" 2>/dev/null || true; }
saw_count() { link_server_saw | grep -cxF "$1" || true; }

# --- the DNS-over-TLS upstream: unbound with a private CA -----------------------------------
upstream_answer=192.0.2.1 # unbound's answer for names outside the link's domains
leak_corp=192.0.2.66      # unbound's answer for names under corp.example: a route missed
leak_lab=192.0.2.67
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=dns-proxy-test-ca \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=upstream.test \
    -keyout "$work/upstream.key" -out "$work/upstream.csr" 2>/dev/null
openssl x509 -req -in "$work/upstream.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile <(printf 'subjectAltName=DNS:upstream.test\n') -out "$work/upstream.pem" 2>/dev/null
chmod 0644 "$work/ca.pem"
cat >"$work/unbound.conf" <<EOF
server:
  interface: 127.0.0.1@853
  tls-port: 853
  tls-service-key: $work/upstream.key
  tls-service-pem: $work/upstream.pem
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  directory: "$work"
  use-syslog: no
  logfile: "$work/unbound.log"
  log-queries: yes
  do-ip6: no
  module-config: "iterator"
  access-control: 127.0.0.0/8 allow
  local-zone: "." redirect
  local-data: ". 60 IN A $upstream_answer"
  local-zone: "corp.example." redirect
  local-data: "corp.example. 60 IN A $leak_corp"
  local-zone: "lab.example." redirect
  local-data: "lab.example. 60 IN A $leak_lab"
remote-control:
  control-enable: no
EOF
nsenter --net="/run/netns/$cli" unbound -d -c "$work/unbound.conf" >"$work/unbound.err" 2>&1 &
pids+=($!)

# --- dns-proxy ------------------------------------------------------------------------------
mkdir -p "$work/run"
cp "$binary" "$work/bin/dns-proxy"
chmod 0755 "$work/bin/dns-proxy"
chown "$daemon_user" "$work/run"
cat >"$work/dns-proxy.toml" <<EOF
listen = ["127.0.0.1:53"]
control_socket = "$work/run/control"
resolv_conf = "$work/run/resolv.conf"
log_level = "debug"
# The test's DoT upstream serves no signed root.
dnssec = "off"
[[upstream]]
address = "127.0.0.1:853"
tls_name = "upstream.test"
ca_file = "$work/ca.pem"
EOF
chmod 0644 "$work/dns-proxy.toml"
daemon_pid=
start_daemon() {
    nsenter --net="/run/netns/$cli" setpriv --reuid="$daemon_uid" --regid="$(id -g "$daemon_user")" --clear-groups \
        env -i PATH=/usr/bin:/bin DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" \
        "$work/bin/dns-proxy" --config "$work/dns-proxy.toml" --log stderr >>"$work/dns-proxy.log" 2>&1 &
    daemon_pid=$!
    pids+=("$daemon_pid")
}
stop_daemon() {
    kill -TERM "$daemon_pid"
    for _ in $(seq 50); do
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    ! kill -0 "$daemon_pid" 2>/dev/null || die "dns-proxy did not stop within 5 s of SIGTERM"
}
dns_proxy_status() { in_cli "$work/bin/dns-proxy" status --control "$work/run/control" 2>&1 || true; }

# --- NetworkManager -------------------------------------------------------------------------
mkdir -p "$work/nm/conf.d" "$work/nm/connections" "$work/nm/run" "$work/nm/lib"
cp "$repo/packaging/NetworkManager/90-dns-proxy.conf" "$work/nm/conf.d/"
cat >"$work/nm/NetworkManager.conf" <<EOF
[main]
plugins=keyfile
no-auto-default=*
auth-polkit=false
[keyfile]
path=$work/nm/connections
[logging]
level=DEBUG
domains=DNS:DEBUG,DHCP4:INFO,DEVICE:INFO,CORE:INFO
EOF
cat >"$work/nm/connections/lan.nmconnection" <<EOF
[connection]
id=lan
type=ethernet
interface-name=eth0
[ipv4]
method=auto
[ipv6]
method=disabled
EOF
chmod 0600 "$work/nm/connections/lan.nmconnection"
# /etc/resolv.conf as NetworkManager sees it: the drop-in's dns=none must leave it alone.
printf '# untouched\n' >"$work/nm/resolv.conf"
start_network_manager() {
    # Its own mount namespace: /sys read-only (without udev, NetworkManager manages the veth
    # at once), its run and state directories and /etc/resolv.conf private to the test.
    # shellcheck disable=SC2016 # expanded by that shell
    nsenter --net="/run/netns/$cli" unshare --mount --propagation private sh -c '
        set -e
        mount -o remount,ro /sys
        mount --bind "$1/run" /run
        mount --bind "$1/lib" /var/lib/NetworkManager
        mount --bind "$1/resolv.conf" /etc/resolv.conf
        exec NetworkManager --debug --config="$1/NetworkManager.conf" --config-dir="$1/conf.d" \
            --system-config-dir="$1/none" --intern-config="$1/intern.conf" \
            --state-file="$1/lib/NetworkManager.state" --pid-file="$1/run/NetworkManager.pid"' \
        _ "$work/nm" >>"$work/nm.log" 2>&1 &
    pids+=($!)
}

# --- helpers --------------------------------------------------------------------------------
# A through dns-proxy: the first address, or nothing.
ask() { in_cli dig +short +tries=1 +timeout=2 @127.0.0.1 "$1" A 2>/dev/null | head -n 1 || true; }
# A name never asked before under DOMAIN (no cache can answer it).
fresh_name() { echo "n${EPOCHREALTIME/./}-$RANDOM.$1"; }
# Polls every 50 ms for up to SECONDS until COMMAND succeeds; sets $waited_ms.
waited_ms=0
wait_until() {
    local seconds=$1 start
    shift
    start=$(now)
    while true; do
        if "$@"; then
            waited_ms=$(ms_since "$start")
            return 0
        fi
        (($(now) - start < seconds * 1000000)) || break
        sleep 0.05
    done
    waited_ms=$(ms_since "$start")
    return 1
}
# A fresh name under DOMAIN is answered with ADDRESS.
answered_by() { [[ $(ask "$(fresh_name "$1")") == "$2" ]]; }
resolv_conf_has() { grep -qx -- "$1" "$work/run/resolv.conf" 2>/dev/null; }
resolv_conf_lacks_search() { [[ -f $work/run/resolv.conf ]] && ! grep -q '^search' "$work/run/resolv.conf"; }
journal_tail() {
    echo "      --- dns-proxy log"
    tail -n 20 "$work/dns-proxy.log" | sed 's/^/      /'
}
indent() { sed 's/^/      /'; }

echo "link test: $(NetworkManager --version 2>/dev/null | head -n 1 | sed 's/^/NetworkManager /'), $(dnsmasq --version | head -n 1 | cut -d' ' -f1-3), $resolvectl_version"

# --- 1. the lease reaches dns-proxy ---------------------------------------------------------
start_daemon
wait_until 5 test -S "$work/run/control" || { journal_tail; die "dns-proxy did not start"; }
start_network_manager
wait_until 30 test -s "$work/lease-events" || { tail -n 30 "$work/nm.log"; die "no DHCP lease within 30 s"; }
lease_at=$(head -n 1 "$work/lease-events" | cut -d' ' -f1)
lease_at=${lease_at/./}
if wait_until 10 answered_by corp.example "$corp_answer"; then
    lease_to_answer=$(ms_since "$lease_at")
    if ((lease_to_answer <= 10000)) && answered_by lab.example "$lab_answer" && answered_by home.arpa "$home_answer"; then
        pass "1 lease -> a name under corp.example answered by the link's server (dnsmasq) ${lease_to_answer} ms after the DHCP lease; lab.example and home.arpa too"
    else
        fail "1 lease -> answer took ${lease_to_answer} ms (limit 10000); lab.example: '$(ask "$(fresh_name lab.example)")', home.arpa: '$(ask "$(fresh_name home.arpa)")'"
    fi
else
    fail "1 no answer from the link's server within 10 s of the lease: $(ask "$(fresh_name corp.example)")"
    journal_tail
    grep -E 'resolve1|dns-plugin' "$work/nm.log" | tail -n 10 | sed 's/^/      /'
fi

# --- 2. resolv.conf, status -----------------------------------------------------------------
if wait_until 2 resolv_conf_has 'search corp.example lab.example home.arpa' &&
    resolv_conf_has 'nameserver 127.0.0.1' && resolv_conf_has 'options edns0 trust-ad' &&
    [[ $(cat "$work/nm/resolv.conf") == '# untouched' ]]; then
    pass "2 $work/run/resolv.conf: $(grep -v '^#' "$work/run/resolv.conf" | paste -sd';' | sed 's/;/; /g'); NetworkManager left /etc/resolv.conf alone (dns=none)"
else
    fail "2 resolv.conf: '$(cat "$work/run/resolv.conf" 2>/dev/null)'; NetworkManager's /etc/resolv.conf: '$(cat "$work/nm/resolv.conf")'"
fi
status=$(dns_proxy_status)
if [[ $status == *eth0* && $status == *$link_server* && $status == *corp.example* && $status == *lab.example* ]]; then
    pass "2 dns-proxy status lists eth0 with $link_server and corp.example, lab.example"
else
    fail "2 dns-proxy status does not show the link:"
    indent <<<"$status"
fi

# --- 3. resolvectl as root ------------------------------------------------------------------
rc_status=$(in_cli "$resolvectl" status 2>&1 || echo "exit status $?")
rc_query=$(in_cli "$resolvectl" query "probe.corp.example" 2>&1 || echo "exit status $?")
if [[ $rc_status == *"(eth0)"* && $rc_status == *"DNS Servers: $link_server"* &&
    $rc_status == *"DNS Domain: corp.example lab.example home.arpa"* && $rc_query == *"$corp_answer"* ]]; then
    pass "3 resolvectl status shows eth0 with DNS Servers: $link_server, DNS Domain: corp.example lab.example home.arpa; resolvectl query probe.corp.example: $corp_answer"
else
    fail "3 resolvectl status / query:"
    indent <<<"$rc_status"
    indent <<<"$rc_query"
fi
domain_out=$(in_cli "$resolvectl" domain eth0 corp.example lab.example '~extra.example' 2>&1 || echo "exit status $?")
if [[ -z $domain_out ]] && wait_until 2 answered_by extra.example "$extra_answer" &&
    [[ $(in_cli "$resolvectl" domain eth0 2>&1) == *"corp.example lab.example ~extra.example"* ]]; then
    pass "3 resolvectl domain eth0 ... ~extra.example: names under extra.example answered by the link's server after ${waited_ms} ms; resolvectl domain eth0 reads it back"
else
    fail "3 resolvectl domain eth0 ... ~extra.example: '$domain_out'; reads back '$(in_cli "$resolvectl" domain eth0 2>&1)'"
fi

# --- 4. anyone else changes nothing ---------------------------------------------------------
cached=cached-$$.corp.example
ask "$cached" >/dev/null
ask "$cached" >/dev/null
as_other() { in_cli setpriv --reuid="$other_uid" --regid="$(id -g "$other_user")" --clear-groups "$@"; }
denied_all=1
denials=()
for command in "domain eth0 evil.example" "dns eth0 10.77.0.9" "revert eth0" "flush-caches"; do
    # shellcheck disable=SC2086 # the command's words
    out=$(as_other "$resolvectl" $command 2>&1 </dev/null) && denied_all=0
    [[ $out == *"ccess denied"* ]] || denied_all=0
    denials+=("$command: ${out//$'\n'/ }")
done
ask "$cached" >/dev/null
read_as_other=$(as_other "$resolvectl" query probe.lab.example 2>&1 || true)
if ((denied_all)) && [[ $(saw_count "$cached") == 1 ]] &&
    [[ $(in_cli "$resolvectl" domain eth0 2>&1) == *"corp.example lab.example ~extra.example"* ]] &&
    [[ $(in_cli "$resolvectl" dns eth0 2>&1) == *": $link_server" ]] &&
    answered_by corp.example "$corp_answer" && [[ $read_as_other == *"$lab_answer"* ]]; then
    pass "4 uid $other_uid: resolvectl domain, dns, revert and flush-caches refused (\"${denials[0]#*: }\"); domains, servers and cache unchanged; its resolvectl query still answered"
else
    fail "4 uid $other_uid: cache count $(saw_count "$cached") (want 1), domains '$(in_cli "$resolvectl" domain eth0 2>&1)', dns '$(in_cli "$resolvectl" dns eth0 2>&1)', query '$read_as_other'"
    printf '      %s\n' "${denials[@]}"
fi

# --- 5. flush-caches and revert as root -----------------------------------------------------
flush_out=$(in_cli "$resolvectl" flush-caches 2>&1 || echo "exit status $?")
ask "$cached" >/dev/null
if [[ -z $flush_out && $(saw_count "$cached") == 2 ]]; then
    pass "5 resolvectl flush-caches: the cached name went to the link's server again"
else
    fail "5 resolvectl flush-caches: '$flush_out', the link's server saw $cached $(saw_count "$cached") times (want 2)"
fi
revert_out=$(in_cli "$resolvectl" revert eth0 2>&1 || echo "exit status $?")
reverted_ms=
if [[ -z $revert_out ]] && wait_until 2 answered_by corp.example "$leak_corp" && reverted_ms=$waited_ms &&
    answered_by lab.example "$leak_lab" && wait_until 2 resolv_conf_lacks_search; then
    pass "5 resolvectl revert eth0: names under corp.example and lab.example back on DNS-over-TLS within ${reverted_ms} ms; search list gone from resolv.conf"
else
    fail "5 resolvectl revert eth0: '$revert_out'; corp.example answered '$(ask "$(fresh_name corp.example)")'"
fi

# --- 6. restart: NetworkManager replays, untouched ------------------------------------------
stop_daemon
restart_at=$(now)
start_daemon
if wait_until 10 answered_by corp.example "$corp_answer"; then
    pass "6 dns-proxy restarted: the link's zones are back $(ms_since "$restart_at") ms after the start, replayed by NetworkManager (not touched)"
else
    fail "6 dns-proxy restarted: no zones from NetworkManager's replay within 10 s"
    journal_tail
fi

# --- 7. "~." on the link: still only the link's own names reach it --------------------------
# NetworkManager sends ("." , routing-only) for a connection with a negative DNS priority.
nmcli connection modify lan ipv4.dns-priority -50 ipv4.dns-search '~.'
nmcli device reapply eth0 >/dev/null
link_has_tilde() { [[ $(in_cli "$resolvectl" domain eth0 2>&1) == *"~."* ]]; }
wait_until 5 link_has_tilde || true
outside=()
ok=1
for _ in 1 2 3; do
    name=$(fresh_name example.org)
    outside+=("$name")
    [[ $(ask "$name") == "$upstream_answer" ]] || ok=0
done
tilde_rc=$(in_cli "$resolvectl" domain eth0 2>&1 || true)
in_cli "$resolvectl" domain eth0 '~.' corp.example lab.example || ok=0
for _ in 1 2 3; do
    name=$(fresh_name example.net)
    outside+=("$name")
    [[ $(ask "$name") == "$upstream_answer" ]] || ok=0
done
answered_by corp.example "$corp_answer" || ok=0
for name in "${outside[@]}"; do
    [[ $(saw_count "$name") == 0 ]] || ok=0
done
if ((ok)) && [[ $tilde_rc == *"~."* ]]; then
    pass "7 with ~. on eth0 (NetworkManager dns-priority -50 and resolvectl domain eth0 '~.'): ${#outside[@]} other names answered over DNS-over-TLS, none reached the link's server; corp.example still did"
else
    fail "7 with ~. on eth0 ('$tilde_rc'): other names reached the link's server or were not answered over DNS-over-TLS"
    for name in "${outside[@]}"; do echo "      $name: link server saw it $(saw_count "$name") times"; done
fi
nmcli connection modify lan ipv4.dns-priority 0 ipv4.dns-search ''
nmcli device reapply eth0 >/dev/null

# --- 8. disconnected: the zones go --------------------------------------------------------------
wait_until 5 answered_by corp.example "$corp_answer" || true
disconnect_at=$(now)
nmcli device disconnect eth0 >/dev/null
disconnected_at=$(now)
zones_gone() { answered_by corp.example "$leak_corp" && resolv_conf_lacks_search; }
if wait_until 5 zones_gone; then
    gone=$(ms_since "$disconnect_at")
    after=$(((gone * 1000 - (disconnected_at - disconnect_at)) / 1000))
    status=$(dns_proxy_status)
    if ((gone <= 2000)) && [[ $status != *"$link_server"* ]]; then
        pass "8 nmcli device disconnect eth0: zones and search list gone ${gone} ms after the command (${after} ms after it returned); dns-proxy status lists no link server"
    else
        fail "8 nmcli device disconnect eth0: zones gone after ${gone} ms (limit 2000); status:"
        indent <<<"$status"
    fi
else
    fail "8 nmcli device disconnect eth0: zones still there after 5 s: corp.example answered '$(ask "$(fresh_name corp.example)")', resolv.conf '$(cat "$work/run/resolv.conf")'"
fi

# --- 9. reconnected: a second lease ---------------------------------------------------------
leases_before=$(wc -l <"$work/lease-events")
new_lease() { (($(wc -l <"$work/lease-events") > leases_before)); }
nmcli device connect eth0 >/dev/null
if wait_until 30 new_lease &&
    wait_until 10 answered_by corp.example "$corp_answer"; then
    lease_at=$(tail -n 1 "$work/lease-events" | cut -d' ' -f1)
    pass "9 nmcli device connect eth0: answered by the link's server $(ms_since "${lease_at/./}") ms after the new lease"
else
    fail "9 nmcli device connect eth0: no answer from the link's server"
fi

# --- 10. the link's server saw only the link's names ----------------------------------------
strays=$(link_server_saw | grep -vE '(^|\.)((corp|lab|extra)\.example|home\.arpa)$' || true)
if [[ -z $strays ]]; then
    pass "10 the link's server saw $(link_server_saw | wc -l) queries, all under corp.example, lab.example, home.arpa or extra.example"
else
    fail "10 the link's server saw other names: $(echo "$strays" | sort -u | paste -sd' ')"
fi

kill "$watchdog" 2>/dev/null || true
if ((failed)); then
    echo "link test: FAILED (work directory: logs above)"
    exit 1
fi
echo "link test: all checks passed"
