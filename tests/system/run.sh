#!/usr/bin/env bash
# System test: the .deb and the .rpm installed and run under a real systemd.
#
# Boots a debootstrapped Debian 12 with systemd-nspawn (private network: the container has
# only its own loopback), installs the package the way a user does, and checks the seven
# points below against a DoT upstream (unbound with a private CA) inside the container.
# Prints one line per check and exits non-zero if any fails. Run it as root:
#
#   make system-test            (or tests/system/run.sh)
#
# The base tree is cached in $DNS_PROXY_TESTBED_CACHE (default /var/cache/dns-proxy-testbed).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${DNS_PROXY_TESTBED_CACHE:-/var/cache/dns-proxy-testbed}
# What the container needs: systemd itself, dig and ss for the checks, unbound as the upstream.
include=systemd,systemd-sysv,dbus,iproute2,bind9-dnsutils,unbound,ca-certificates
answer_one=192.0.2.1 # what upstream 1 answers for probe.test
answer_two=192.0.2.2 # what upstream 2 answers

skip() {
    echo "system test: SKIPPED: $*"
    exit 0
}
die() {
    echo "system test: ERROR: $*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || skip "needs root for systemd-nspawn and debootstrap"
for tool in systemd-nspawn debootstrap nsenter rpm zstd openssl; do
    command -v "$tool" >/dev/null || skip "$tool is not installed"
done

work=$(mktemp -d /tmp/dns-proxy-system.XXXXXX)
nspawn_pid=
cleanup() {
    stop_container
    rm -rf "$work"
}
trap cleanup EXIT

failed=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() {
    printf 'FAIL  %s\n' "$*"
    failed=1
}

# --- packages -------------------------------------------------------------------------------
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)
newer=$version+systest
arch=$(dpkg --print-architecture)
make -s -C "$repo" deb >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; die "make deb failed"; }
make -s -C "$repo" deb DEB_VERSION="$newer" >>"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log"; die "make deb DEB_VERSION=$newer failed"; }
make -s -C "$repo" rpm >>"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; die "make rpm failed"; }
mkdir -p "$work/in"
cp "$repo/target/pkg/dns-proxy_${version}_$arch.deb" "$repo/target/pkg/dns-proxy_${newer}_$arch.deb" "$work/in/"
rpm_file=$(ls -t "$repo"/target/pkg/dns-proxy-"$version"-*.rpm | head -n 1)
cp "$rpm_file" "$work/in/dns-proxy.rpm"

# --- base tree ------------------------------------------------------------------------------
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
tarball=$cache/bookworm-$(echo "$include" | sha256sum | cut -c1-12).tar.zst
if [[ ! -s $tarball ]]; then
    echo "system test: building the Debian 12 tree (once; cached in $tarball)"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include="$include" bookworm "$work/base" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; skip "debootstrap failed"; }
    # The packaged unbound would take port 53 at boot; the test starts its own instances.
    ln -sf /dev/null "$work/base/etc/systemd/system/unbound.service"
    ln -sf /dev/null "$work/base/etc/systemd/system/unbound-resolvconf.service"
    tar --zstd -C "$work/base" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$work/base"
fi
unpack() { mkdir -p "$1" && tar --zstd -C "$1" -xf "$tarball"; }

# --- the test upstreams: unbound serving DoT with a private CA ------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=dns-proxy-test-ca \
    -keyout "$work/ca.key" -out "$work/in/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=upstream.test \
    -keyout "$work/in/upstream.key" -out "$work/upstream.csr" 2>/dev/null
openssl x509 -req -in "$work/upstream.csr" -CA "$work/in/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile <(printf 'subjectAltName=DNS:upstream.test\n') -out "$work/in/upstream.pem" 2>/dev/null
chmod 0644 "$work/in/upstream.key"
for n in 1 2; do
    cat >"$work/in/upstream-$n.conf" <<EOF
server:
  interface: 127.0.0.$n@853
  tls-port: 853
  tls-service-key: /srv/in/upstream.key
  tls-service-pem: /srv/in/upstream.pem
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  use-syslog: no
  logfile: ""
  do-ip6: no
  module-config: "iterator"
  access-control: 127.0.0.0/8 allow
  local-zone: "test." static
  local-data: "probe.test. 60 IN A 192.0.2.$n"
remote-control:
  control-enable: no
EOF
done
cat >"$work/in/test-upstream@.service" <<'EOF'
[Unit]
Description=DoT test upstream %i
[Service]
ExecStart=/usr/sbin/unbound -d -c /srv/in/upstream-%i.conf
EOF
config() { # upstream number, then extra lines
    printf '# edited by the system test\nlog_level = "debug"\n%s\n[[upstream]]\naddress = "127.0.0.%s:853"\ntls_name = "upstream.test"\nca_file = "/etc/dns-proxy-test-ca.pem"\n' "${2:-}" "$1"
}

# --- the container --------------------------------------------------------------------------
leader=
boot() { # tree directory, then extra systemd-nspawn options
    setsid systemd-nspawn -q -D "$1" -b --register=no --keep-unit --private-network \
        --console=pipe --bind-ro="$work/in:/srv/in" "${@:2}" </dev/null >"$work/nspawn.log" 2>&1 &
    nspawn_pid=$!
    leader=
    for _ in $(seq 100); do
        leader=$(pgrep -P "$nspawn_pid" -x systemd || true)
        [[ -n $leader ]] && break
        sleep 0.1
    done
    [[ -n $leader ]] || { cat "$work/nspawn.log"; die "the container did not boot"; }
    local state=
    for _ in $(seq 200); do
        state=$(in_ct systemctl is-system-running 2>/dev/null || true)
        [[ $state == running || $state == degraded ]] && return 0
        sleep 0.1
    done
    die "the container's systemd is '$state' after 20 s"
}
in_ct() { nsenter -t "$leader" -a "$@"; }
stop_container() {
    [[ -n $nspawn_pid ]] || return 0
    in_ct systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 100); do
        kill -0 "$nspawn_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=
}
start_upstreams() {
    in_ct cp /srv/in/test-upstream@.service /etc/systemd/system/
    in_ct cp /srv/in/ca.pem /etc/dns-proxy-test-ca.pem
    in_ct systemctl daemon-reload
    in_ct systemctl start test-upstream@1.service test-upstream@2.service
}
# dig inside the container; prints the A record or nothing.
ask() { in_ct dig +short +tries=1 +timeout=2 "$@" probe.test A 2>/dev/null | head -n 1 || true; }
# Waits up to 5 s for SERVER (and dig flags) to answer EXPECTED.
expect_answer() {
    local expected=$1 got=
    shift
    for _ in $(seq 50); do
        got=$(ask "$@")
        [[ $got == "$expected" ]] && return 0
        sleep 0.1
    done
    echo "    dig $* probe.test: got '${got}', want '$expected'"
    return 1
}
main_pid() { in_ct systemctl show -p MainPID --value dns-proxy.service; }

# --- checks 1 to 6: the .deb ----------------------------------------------------------------
unpack "$work/tree"
boot "$work/tree"
start_upstreams

# 1. apt install: the socket is enabled and active, and PID 1 owns port 53.
in_ct apt-get install -y -q "/srv/in/dns-proxy_${version}_$arch.deb" >"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log"; die "apt install failed"; }
listeners=$(in_ct ss -H -lnup; in_ct ss -H -lntp)
verify=$(in_ct systemd-analyze verify --man=no dns-proxy.socket dns-proxy.service 2>&1 || echo "exit status $?")
if [[ -z $verify && $(in_ct systemctl is-enabled dns-proxy.socket) == enabled &&
    $(in_ct systemctl is-active dns-proxy.socket) == active ]] &&
    grep -q '127.0.0.1:53 .*"systemd",pid=1,' <<<"$listeners" &&
    grep -q '\[::1\]:53 .*"systemd",pid=1,' <<<"$listeners" &&
    [[ $(grep -c ':53 .*"systemd",pid=1,' <<<"$listeners") == 4 ]]; then
    pass "1 apt install: dns-proxy.socket enabled and active; PID 1 holds 127.0.0.1:53 and [::1]:53 (UDP+TCP); systemd-analyze verify clean"
else
    fail "1 apt install: socket $(in_ct systemctl is-enabled dns-proxy.socket)/$(in_ct systemctl is-active dns-proxy.socket); verify: '$verify'; listeners:"
    echo "$listeners"
fi

# 2. Configured for the private-CA upstream: answers over UDP and TCP, IPv4 and IPv6.
config 1 | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
in_ct systemctl enable --now dns-proxy.socket >/dev/null 2>&1
in_ct systemctl restart dns-proxy.service
ok=1
for server in @127.0.0.1 @::1; do
    for transport in +notcp +tcp; do
        expect_answer "$answer_one" "$server" "$transport" || ok=0
    done
done
if ((ok)); then
    pass "2 dig over UDP and TCP, IPv4 and IPv6: answered through DoT to the private-CA upstream"
else
    fail "2 dig through dns-proxy"
    in_ct journalctl -u dns-proxy.service -n 30 --no-pager
fi

# 3. Unprivileged: a dynamic uid, no capabilities, and the STATUS line.
pid=$(main_pid)
uid=$(in_ct awk '/^Uid:/ {print $2}' "/proc/$pid/status")
capeff=$(in_ct awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
status=$(in_ct systemctl status --no-pager dns-proxy.service 2>&1 || true)
if [[ $uid != 0 && $capeff == 0000000000000000 ]] && grep -q 'Status: "' <<<"$status"; then
    pass "3 service runs as uid $uid with CapEff $capeff; $(grep -o 'Status: ".*"' <<<"$status")"
else
    fail "3 service uid '$uid' CapEff '$capeff'; status:"
    echo "$status"
fi

# 4. Reload applies a new upstream; a broken config on reload keeps the running one.
config 2 | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
in_ct systemctl reload dns-proxy.service
if expect_answer "$answer_two" @127.0.0.1; then
    config 1 'timeout = "soon"' | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    in_ct systemctl reload dns-proxy.service || true
    sleep 0.5
    refused=$(in_ct journalctl -u dns-proxy.service --no-pager -o cat | grep -m1 'timeout' || true)
    if expect_answer "$answer_two" @127.0.0.1 &&
        [[ $(in_ct systemctl is-active dns-proxy.service) == active && -n $refused ]]; then
        pass "4 reload switched to upstream 2; a broken config was refused and upstream 2 kept serving ($refused)"
    else
        fail "4 a broken config on reload: state $(in_ct systemctl is-active dns-proxy.service), log '$refused'"
    fi
else
    fail "4 reload did not switch to upstream 2"
fi
config 1 | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
in_ct systemctl reload dns-proxy.service
expect_answer "$answer_one" @127.0.0.1 || true

# 5. No query lost across a restart: systemd keeps the sockets, so queries wait in them.
stream() { # transport flag, count
    local answered=0
    for _ in $(seq "$2"); do
        [[ $(dig +short +tries=1 +timeout=3 "$1" @127.0.0.1 probe.test A 2>/dev/null) == "$answer_one" ]] &&
            answered=$((answered + 1))
        sleep 0.01
    done
    echo "$answered"
}
export -f stream
export answer_one
queries=300
in_ct bash -c "stream +notcp $queries" >"$work/udp.count" &
udp_client=$!
in_ct bash -c "stream +tcp $queries" >"$work/tcp.count" &
tcp_client=$!
sleep 1
old_pid=$(main_pid)
in_ct systemctl restart dns-proxy.service
new_pid=$(main_pid)
wait "$udp_client" "$tcp_client" || true
udp=$(cat "$work/udp.count")
tcp=$(cat "$work/tcp.count")
if [[ $old_pid != "$new_pid" && $udp == "$queries" && $tcp == "$queries" ]]; then
    pass "5 restart (pid $old_pid -> $new_pid) during a steady stream: UDP $udp/$queries, TCP $tcp/$queries answered, 0 lost"
else
    fail "5 restart (pid $old_pid -> $new_pid): UDP $udp/$queries, TCP $tcp/$queries answered"
fi

# 6. Upgrade keeps the edited conffile and restarts the service without losing a query;
#    purge removes everything.
before=$(main_pid)
in_ct bash -c "stream +notcp $queries" >"$work/upgrade.count" &
client=$!
sleep 0.5
in_ct apt-get install -y -q "/srv/in/dns-proxy_${newer}_$arch.deb" >"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log"; die "apt upgrade failed"; }
after=$(main_pid)
wait "$client" || true
during=$(cat "$work/upgrade.count")
upgraded=$(in_ct dpkg-query -W -f='${Version}' dns-proxy)
kept=$(in_ct grep -c 'edited by the system test' /etc/dns-proxy/dns-proxy.toml || true)
ok=1
[[ $upgraded == "$newer" && $kept == 1 && $after != 0 && $before != "$after" && $during == "$queries" ]] || ok=0
expect_answer "$answer_one" @127.0.0.1 || ok=0
in_ct apt-get purge -y -q dns-proxy >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; die "apt purge failed"; }
leftovers=$(in_ct find /etc /lib/systemd /usr/lib/systemd /usr/bin -name 'dns-proxy*' -not -name dns-proxy-test-ca.pem 2>/dev/null || true)
port53=$(in_ct ss -H -lnu 'sport = :53'; in_ct ss -H -lnt 'sport = :53')
if ((ok)) && [[ -z $leftovers && -z $port53 ]]; then
    pass "6 upgrade to $upgraded kept the edited conffile and restarted the service (pid $before -> $after), $during/$queries queries answered meanwhile; purge left no files and freed port 53"
else
    fail "6 upgrade: version '$upgraded', conffile kept '$kept', pid $before -> $after, $during/$queries answered; purge leftovers: '$leftovers'; port 53: '$port53'"
fi
stop_container

# --- check 7: the .rpm, installed with rpm --root into a copy of the tree -------------------
unpack "$work/rpmtree"
rpm --root "$work/rpmtree" --dbpath /var/lib/rpm --nodeps -i "$work/in/dns-proxy.rpm" >"$work/rpm.log" 2>&1 ||
    { cat "$work/rpm.log"; die "rpm install failed"; }
config 1 >"$work/rpmtree/etc/dns-proxy/dns-proxy.toml"
boot "$work/rpmtree"
start_upstreams
if [[ $(in_ct systemctl is-enabled dns-proxy.socket) == enabled &&
    $(in_ct systemctl is-active dns-proxy.socket) == active ]] &&
    expect_answer "$answer_one" @127.0.0.1 && expect_answer "$answer_one" @::1 +tcp; then
    pass "7 rpm --root install: %post enabled dns-proxy.socket; after boot it is active and answers"
else
    fail "7 rpm: socket $(in_ct systemctl is-enabled dns-proxy.socket)/$(in_ct systemctl is-active dns-proxy.socket)"
    cat "$work/rpm.log"
fi
stop_container

source "$repo/tests/system/allowlist.sh" # the IP allow list, in a container of its own

if ((failed)); then
    echo "system test: FAILED"
    exit 1
fi
echo "system test: all checks passed"
