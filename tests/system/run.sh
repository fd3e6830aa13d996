#!/usr/bin/env bash
# System test: the .deb and the .rpm installed and run under a real systemd.
#
# For each Debian release (default: 11 bullseye, 12 bookworm, 13 trixie) it boots debootstrapped
# trees with systemd-nspawn (private network: each container has only its own loopback) and
# runs the sub-tests below in them:
#
#   package_checks         the whole package test on a tree with unbound and ca-certificates:
#                          install, dig over UDP/TCP v4/v6 through DoT to a private-CA upstream,
#                          sandbox, dns-proxy status and flush over the control socket, reload,
#                          restart and upgrade without losing a query, purge
#   default_config_checks  a minimal tree (debootstrap minbase: no ca-certificates, no test
#                          upstream): the package installed as it comes, offline, must answer
#                          localhost and SERVFAIL other names; then an emptied trust store and a
#                          broken configuration found at start must keep it serving local zones,
#                          say why in one line, and clear on reload once fixed
#
#   allowlist_checks       (allowlist.sh) the service's IP allow list follows the configuration
#   tls_checks             (tls.sh) DoT and DoH for clients through the package's example socket
#                          units, the key passed with LoadCredential=, kdig as the client
#   resolved_checks        (link.sh) installed beside systemd-resolved: nothing enabled; switching
#                          over; the units conflict
#   link_checks            (link.sh) NetworkManager managing a veth with dnsmasq's DHCP on the other
#                          end: after boot, before any query, the lease's domain is answered by
#                          the packaged service under its sandbox; resolvectl of the release
#
# then installs the .rpm with `rpm --root` into the Debian 12 tree and boots it (rpm_checks).
# Prints one line per check and exits non-zero if any fails. Run it as root:
#
#   make system-test                 (or tests/system/run.sh [SUITE...])
#   tests/system/run.sh --deb FILE [SUITE...]
#                                    only default_config_checks, with a given .deb, no build
#   tests/system/run.sh --only link_checks,rpm_checks [SUITE...]
#                                    only these sub-tests
#
# The trees are built once per release and kept as compressed tarballs in
# $DNS_PROXY_TESTBED_CACHE (default /var/cache/dns-proxy-testbed); only a missing one is
# downloaded. A sub-test is a function that gets the suite as $1 and runs commands in the
# booted container with in_ct (pass/fail print its results); list it, with any extra
# systemd-nspawn options, in full_tree_tests or minimal_tree_tests at the end.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${DNS_PROXY_TESTBED_CACHE:-/var/cache/dns-proxy-testbed}
given_deb=
only=
while [[ ${1:-} == --* ]]; do
    case $1 in
    --deb) given_deb=$(realpath "${2:?--deb needs a file}") ;;
    --only) only=,${2:?--only needs sub-test names},  ;;
    *) echo "system test: unknown option $1" >&2 && exit 64 ;;
    esac
    shift 2
done
# Whether the sub-test FUNCTION runs (all of them without --only).
selected() { [[ -z $only || $only == *",$1,"* ]]; }
suites=("$@")
((${#suites[@]})) || suites=(bullseye bookworm trixie)
# Every tree: systemd itself, dig and ss for the checks. The full tree adds the test upstream
# (unbound), ca-certificates (and with it openssl), kdig for DoT and DoH, and NetworkManager
# (masked but in link_checks), with the release's systemd-resolved package in apt's cache for
# its resolvectl (not installed: it would take the bus name and /etc/resolv.conf).
base_include=systemd,systemd-sysv,dbus,iproute2,bind9-dnsutils
full_extra="unbound ca-certificates knot-dnsutils network-manager"
# Part of the cached tarballs' names: changing what goes into a tree makes new ones.
tree_key=$(printf '%s\n' "$base_include" "$full_extra" offline-ca-certificates resolved-deb | sha256sum | cut -c1-12)
answer_one=192.0.2.1 # what upstream 1 answers for probe.test
answer_two=192.0.2.2 # what upstream 2 answers

skip() {
    # On CI a system test that cannot run is a failure, not a skip.
    [[ -z ${CI:-} ]] || die "$*"
    echo "system test: SKIPPED: $*"
    exit 0
}
die() {
    echo "system test: ERROR: $*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || skip "needs root for systemd-nspawn and debootstrap"
for tool in systemd-nspawn debootstrap nsenter rpm zstd openssl dnsmasq; do
    command -v "$tool" >/dev/null || skip "$tool is not installed"
done

work=$(mktemp -d /tmp/dns-proxy-system.XXXXXX)
nspawn_pid=
cleanup() {
    # Defined further down: an early exit has nothing to stop.
    ! declare -F stop_container >/dev/null || stop_container
    ! declare -F link_cleanup >/dev/null || link_cleanup
    rm -rf "$work"
}
trap cleanup EXIT

failed=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() {
    printf 'FAIL  %s\n' "$*"
    failed=1
}
started=$SECONDS
took() { echo "system test: $* ($((SECONDS - started)) s so far)"; }

# --- packages -------------------------------------------------------------------------------
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)
newer=$version+systest
arch=$(dpkg --print-architecture)
mkdir -p "$work/in"
deb=dns-proxy_${version}_$arch.deb
if [[ -n $given_deb ]]; then
    cp "$given_deb" "$work/in/$deb"
else
    make -s -C "$repo" deb >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; die "make deb failed"; }
    cp "$repo/target/pkg/$deb" "$work/in/"
    # The upgrade's package for package_checks, the .rpm for rpm_checks.
    if selected package_checks; then
        make -s -C "$repo" deb DEB_VERSION="$newer" >>"$work/build.log" 2>&1 ||
            { tail -40 "$work/build.log"; die "make deb DEB_VERSION=$newer failed"; }
        cp "$repo/target/pkg/dns-proxy_${newer}_$arch.deb" "$work/in/"
    fi
    if selected rpm_checks; then
        make -s -C "$repo" rpm >>"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; die "make rpm failed"; }
        rpm_file=$(ls -t "$repo"/target/pkg/dns-proxy-"$version"-*.rpm | head -n 1)
        cp "$rpm_file" "$work/in/dns-proxy.rpm"
    fi
    took "packages built"
fi

# --- trees ----------------------------------------------------------------------------------
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
tarball() { echo "$cache/$1-$2-$tree_key.tar.zst"; } # suite, minimal|full

# Debootstraps the minimal tree of SUITE and, from it, the full one; writes both tarballs.
build_trees() {
    local suite=$1 tree=$work/build-$1 log=$work/build-$1.log
    # With the host's network (no --private-network), for apt only; not booted.
    local -a apt_in_tree=(systemd-nspawn -q --register=no --keep-unit -D "$tree" --pipe)
    {
        debootstrap --variant=minbase --include="$base_include" "$suite" "$tree" "$mirror" &&
            # apt's package lists, and the .debs of ca-certificates and its dependencies in
            # apt's cache but not installed: offline, apt then installs the package's
            # dependencies from there as it would download them on a real host.
            "${apt_in_tree[@]}" sh -c 'apt-get update -q && apt-get install -y -q --download-only ca-certificates' &&
            tar --zstd -C "$tree" -cf "$(tarball "$suite" minimal).tmp" . &&
            # shellcheck disable=SC2086 # a list of package names
            "${apt_in_tree[@]}" apt-get install -y -q $full_extra &&
            # The packaged unbound would take port 53 at boot; the test starts its own.
            ln -sf /dev/null "$tree/etc/systemd/system/unbound.service" &&
            ln -sf /dev/null "$tree/etc/systemd/system/unbound-resolvconf.service" &&
            # NetworkManager only where link_checks enables it.
            ln -sf /dev/null "$tree/etc/systemd/system/NetworkManager.service" &&
            ln -sf /dev/null "$tree/etc/systemd/system/NetworkManager-wait-online.service" &&
            # Debian 12 and later ship resolvectl in systemd-resolved (11 in systemd itself).
            { "${apt_in_tree[@]}" sh -c 'apt-cache show systemd-resolved >/dev/null 2>&1 || exit 0
                apt-get install -y -q --download-only systemd-resolved'; } &&
            tar --zstd -C "$tree" -cf "$(tarball "$suite" full).tmp" . &&
            mv "$(tarball "$suite" minimal).tmp" "$(tarball "$suite" minimal)" &&
            mv "$(tarball "$suite" full).tmp" "$(tarball "$suite" full)"
    } >"$log" 2>&1
    local status=$?
    rm -rf "$tree"
    return "$status"
}

mkdir -p "$cache"
missing=()
for suite in "${suites[@]}"; do
    [[ -s $(tarball "$suite" minimal) && -s $(tarball "$suite" full) ]] || missing+=("$suite")
done
if ((${#missing[@]})); then
    echo "system test: building the trees of ${missing[*]} (once; cached in $cache)"
    # In parallel: mostly downloads and unpacking.
    builders=()
    for suite in "${missing[@]}"; do
        build_trees "$suite" &
        builders+=($!)
    done
    for i in "${!missing[@]}"; do
        wait "${builders[$i]}" ||
            { tail -20 "$work/build-${missing[$i]}.log"; skip "building the ${missing[$i]} tree failed"; }
    done
    took "trees built"
fi

# --- the test upstreams: unbound serving DoT with a private CA ------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=dns-proxy-test-ca \
    -keyout "$work/ca.key" -out "$work/in/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=upstream.test \
    -keyout "$work/in/upstream.key" -out "$work/upstream.csr" 2>/dev/null
openssl x509 -req -in "$work/upstream.csr" -CA "$work/in/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile <(printf 'subjectAltName=DNS:upstream.test\n') -out "$work/in/upstream.pem" 2>/dev/null
chmod 0644 "$work/in/upstream.key"
# An unbound configuration: interface line(s), then the zone it serves and the address it
# answers for probe.ZONE. The DoT port is 853; the allow-list test also serves plain DNS.
unbound_conf() {
    cat <<EOF
server:
$1
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
  access-control: 0.0.0.0/0 allow
  local-zone: "$2." static
  local-data: "probe.$2. 60 IN A $3"
remote-control:
  control-enable: no
EOF
}
for n in 1 2; do
    unbound_conf "  interface: 127.0.0.$n@853" test "192.0.2.$n" >"$work/in/upstream-$n.conf"
done
cat >"$work/in/test-upstream@.service" <<'EOF'
[Unit]
Description=DoT test upstream %i
[Service]
ExecStart=/usr/sbin/unbound -d -c /srv/in/upstream-%i.conf
EOF
# The test upstreams serve no signed root, so the configurations do not validate DNSSEC.
config() { # upstream number, then extra lines
    printf '# edited by the system test\nlog_level = "debug"\ndnssec = "off"\n%s\n[[upstream]]\naddress = "127.0.0.%s:853"\ntls_name = "upstream.test"\nca_file = "/etc/dns-proxy-test-ca.pem"\n' "${2:-}" "$1"
}

# --- the container --------------------------------------------------------------------------
leader=
boot() { # tree directory, then extra systemd-nspawn options
    local tree=$1
    shift
    setsid systemd-nspawn -q -D "$tree" -b --register=no --keep-unit --private-network \
        --console=pipe --bind-ro="$work/in:/srv/in" "$@" </dev/null >"$work/nspawn.log" 2>&1 &
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
# Unpacks the SUITE's minimal or full tree once per run; prints its directory.
tree() { # suite, minimal|full
    local dir=$work/$1-$2
    if [[ ! -d $dir ]]; then
        mkdir -p "$dir.tmp" && tar --zstd -C "$dir.tmp" -xf "$(tarball "$1" "$2")" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}
# Boots a throw-away copy of the SUITE's minimal or full tree, runs the sub-test FUNCTION with
# the suite as its argument, and powers the container off.
in_container() { # suite, minimal|full, function, then extra systemd-nspawn options
    local suite=$1 kind=$2 function=$3 dir
    shift 3
    dir=$(tree "$suite" "$kind")
    boot "$dir" --ephemeral "$@"
    # In a subshell, so that a command that fails unexpectedly (set -e) ends this sub-test
    # as a failure, and the next ones still run. 100: some check failed (and said so).
    local status before=$failed
    failed=0
    rm -f "$work/failed-command"
    set +e
    (
        set -eE
        trap 'echo "$BASH_SOURCE:$LINENO: $BASH_COMMAND" >"$work/failed-command"' ERR
        "$function" "$suite"
        exit $((failed ? 100 : 0))
    )
    status=$?
    set -e
    failed=$before
    if ((status)); then
        failed=1
        if ((status != 100)); then
            echo "FAIL  $suite $function stopped at a failing command (status $status): $(cat "$work/failed-command" 2>/dev/null)"
            # What the service said: the failing command's own message may not say why.
            in_ct systemctl status --no-pager -n 0 dns-proxy.service 2>&1 | sed 's/^/      /' || true
            in_ct journalctl --no-pager -o cat -n 40 -u dns-proxy.service 2>&1 | sed 's/^/      /' || true
        fi
    fi
    stop_container
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
# The "Status:" text systemd shows for the service.
status_text() { in_ct systemctl show -p StatusText --value dns-proxy.service; }

# --- sub-test: the whole package test (checks 1 to 6) ---------------------------------------
package_checks() {
    local suite=$1
    start_upstreams

    # 1. apt install: the socket is enabled and active, and PID 1 owns port 53.
    in_ct apt-get install -y -q "/srv/in/$deb" >"$work/apt.log" 2>&1 ||
        { cat "$work/apt.log"; fail "$suite 1 apt install"; return; }
    local listeners verify
    listeners=$(in_ct ss -H -lnup; in_ct ss -H -lntp)
    verify=$(in_ct systemd-analyze verify --man=no dns-proxy.socket dns-proxy.service 2>&1 || echo "exit status $?")
    if [[ -z $verify && $(in_ct systemctl is-enabled dns-proxy.socket) == enabled &&
        $(in_ct systemctl is-active dns-proxy.socket) == active ]] &&
        grep -q '127.0.0.1:53 .*"systemd",pid=1,' <<<"$listeners" &&
        grep -q '\[::1\]:53 .*"systemd",pid=1,' <<<"$listeners" &&
        [[ $(grep -c ':53 .*"systemd",pid=1,' <<<"$listeners") == 4 ]]; then
        pass "$suite 1 apt install: dns-proxy.socket enabled and active; PID 1 holds 127.0.0.1:53 and [::1]:53 (UDP+TCP); systemd-analyze verify clean"
    else
        fail "$suite 1 apt install: socket $(in_ct systemctl is-enabled dns-proxy.socket)/$(in_ct systemctl is-active dns-proxy.socket); verify: '$verify'; listeners:"
        echo "$listeners"
    fi

    # 2. Configured for the private-CA upstream: answers over UDP and TCP, IPv4 and IPv6.
    config 1 | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    in_ct systemctl enable --now dns-proxy.socket >/dev/null 2>&1
    in_ct systemctl restart dns-proxy.service
    local ok=1 server transport
    for server in @127.0.0.1 @::1; do
        for transport in +notcp +tcp; do
            expect_answer "$answer_one" "$server" "$transport" || ok=0
        done
    done
    if ((ok)); then
        pass "$suite 2 dig over UDP and TCP, IPv4 and IPv6: answered through DoT to the private-CA upstream"
    else
        fail "$suite 2 dig through dns-proxy"
        in_ct journalctl -u dns-proxy.service -n 30 --no-pager
    fi

    # 3. Unprivileged: a dynamic uid, no capabilities, and the STATUS line.
    local pid uid capeff status
    pid=$(main_pid)
    uid=$(in_ct awk '/^Uid:/ {print $2}' "/proc/$pid/status")
    capeff=$(in_ct awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
    status=$(status_text)
    if [[ $uid != 0 && $capeff == 0000000000000000 && -n $status ]]; then
        pass "$suite 3 service runs as uid $uid with CapEff $capeff; Status: \"$status\""
    else
        fail "$suite 3 service uid '$uid' CapEff '$capeff'; status: '$status'"
    fi

    # S. dns-proxy status and flush, run as root, over the control socket of the packaged,
    #    socket-activated DynamicUser service; another user may read the status but not flush.
    local text json flushed emptied refused socket
    expect_answer "$answer_one" @127.0.0.1 || true # probe.test is cached
    text=$(in_ct dns-proxy status 2>&1 || echo "exit status $?")
    json=$(in_ct dns-proxy status --json 2>&1 || echo "exit status $?")
    flushed=$(in_ct dns-proxy flush probe.test 2>&1 || echo "exit status $?")
    emptied=$(in_ct dns-proxy flush 2>&1 || echo "exit status $?")
    refused=$(in_ct setpriv --reuid=nobody --regid=nogroup --clear-groups dns-proxy flush 2>&1; echo "exit status $?")
    socket=$(in_ct stat -c '%a %u' /run/dns-proxy/control 2>&1 || true)
    if [[ $text == *"State: running"* && $text == *"127.0.0.1:853 (DNS over TLS, upstream.test)"* &&
        $text == *"State: up since"* && $text == *"control /run/dns-proxy/control"* &&
        $json == *'"address": "127.0.0.1:853"'* && $json == *'"state": "up"'* &&
        $flushed == "flushed probe.test and below: 1 entry removed" &&
        $emptied == "flushed the cache: "* && $refused == *"not uid 65534"*"exit status 77" &&
        $socket == "666 $uid" ]]; then
        pass "$suite S dns-proxy status and flush as root over /run/dns-proxy/control (mode and owner: $socket): '$flushed'; '$emptied'; refused to nobody (exit 77)"
    else
        fail "$suite S status/flush: socket '$socket'; flush '$flushed', '$emptied'; as nobody '$refused'; status:"
        echo "$text"
        echo "$json" | head -n 20
    fi

    # 4. Reload applies a new upstream; a broken config on reload keeps the running one.
    config 2 | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    in_ct systemctl reload dns-proxy.service
    if expect_answer "$answer_two" @127.0.0.1; then
        config 1 'timeout = "soon"' | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
        in_ct systemctl reload dns-proxy.service || true
        sleep 0.5
        local refused
        refused=$(in_ct journalctl -u dns-proxy.service --no-pager -o cat | grep -m1 'timeout' || true)
        if expect_answer "$answer_two" @127.0.0.1 &&
            [[ $(in_ct systemctl is-active dns-proxy.service) == active && -n $refused ]]; then
            pass "$suite 4 reload switched to upstream 2; a broken config was refused and upstream 2 kept serving ($refused)"
        else
            fail "$suite 4 a broken config on reload: state $(in_ct systemctl is-active dns-proxy.service), log '$refused'"
        fi
    else
        fail "$suite 4 reload did not switch to upstream 2"
    fi
    config 1 | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    in_ct systemctl reload dns-proxy.service
    expect_answer "$answer_one" @127.0.0.1 || true

    # 5. No query lost across a restart: systemd keeps the sockets, so queries wait in them.
    local queries=300 old_pid new_pid udp tcp udp_client tcp_client
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
        pass "$suite 5 restart (pid $old_pid -> $new_pid) during a steady stream: UDP $udp/$queries, TCP $tcp/$queries answered, 0 lost"
    else
        fail "$suite 5 restart (pid $old_pid -> $new_pid): UDP $udp/$queries, TCP $tcp/$queries answered"
    fi

    # 6. Upgrade keeps the edited conffile and restarts the service without losing a query;
    #    purge removes everything.
    local before after client during upgraded kept leftovers port53
    before=$(main_pid)
    in_ct bash -c "stream +notcp $queries" >"$work/upgrade.count" &
    client=$!
    sleep 0.5
    in_ct apt-get install -y -q "/srv/in/dns-proxy_${newer}_$arch.deb" >"$work/apt.log" 2>&1 ||
        { cat "$work/apt.log"; fail "$suite 6 apt upgrade"; return; }
    after=$(main_pid)
    wait "$client" || true
    during=$(cat "$work/upgrade.count")
    upgraded=$(in_ct dpkg-query -W -f='${Version}' dns-proxy)
    kept=$(in_ct grep -c 'edited by the system test' /etc/dns-proxy/dns-proxy.toml || true)
    ok=1
    [[ $upgraded == "$newer" && $kept == 1 && $after != 0 && $before != "$after" && $during == "$queries" ]] || ok=0
    expect_answer "$answer_one" @127.0.0.1 || ok=0
    in_ct apt-get purge -y -q dns-proxy >"$work/apt.log" 2>&1 ||
        { cat "$work/apt.log"; fail "$suite 6 apt purge"; return; }
    leftovers=$(in_ct find /etc /lib/systemd /usr/lib/systemd /usr/bin -name 'dns-proxy*' -not -name dns-proxy-test-ca.pem 2>/dev/null || true)
    port53=$(in_ct ss -H -lnu 'sport = :53'; in_ct ss -H -lnt 'sport = :53')
    if ((ok)) && [[ -z $leftovers && -z $port53 ]]; then
        pass "$suite 6 upgrade to $upgraded kept the edited conffile and restarted the service (pid $before -> $after), $during/$queries queries answered meanwhile; purge left no files and freed port 53"
    else
        fail "$suite 6 upgrade: version '$upgraded', conffile kept '$kept', pid $before -> $after, $during/$queries answered; purge leftovers: '$leftovers'; port 53: '$port53'"
    fi
}
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

# --- sub-test: the package's own defaults on a minimal tree ---------------------------------
# What the resolver must give with no upstream reachable: localhost from the built-in zone, and
# SERVFAIL for a name it would forward, well within dig's 5 s (the default budget is 2 s).
# Prints what is wrong, nothing when both hold.
local_zones_wrong() {
    local v4 v6 outside
    v4=$(in_ct dig +short +tries=1 +timeout=5 @127.0.0.1 localhost A 2>&1 || true)
    v6=$(in_ct dig +short +tries=1 +timeout=5 +tcp @::1 localhost AAAA 2>&1 || true)
    outside=$(in_ct dig +tries=1 +timeout=5 @127.0.0.1 example.com A 2>&1 | grep -o 'status: [A-Z]*' || true)
    [[ $v4 == 127.0.0.1 ]] || echo "localhost A over UDP: '$v4'"
    [[ $v6 == ::1 ]] || echo "localhost AAAA over TCP/IPv6: '$v6'"
    [[ $outside == 'status: SERVFAIL' ]] || echo "example.com: '${outside:-no answer}' instead of SERVFAIL"
}
units_wrong() {
    local service socket
    service=$(in_ct systemctl is-active dns-proxy.service || true)
    socket=$(in_ct systemctl is-active dns-proxy.socket || true)
    [[ $service == active && $socket == active ]] || echo "service $service, socket $socket"
}
# Journal lines of the service since CURSOR that match PATTERN.
journal_since() { # cursor, pattern
    in_ct journalctl -u dns-proxy.service --no-pager -o cat --after-cursor="$1" | grep -E -- "$2" || true
}
journal_cursor() { in_ct journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'; }

default_config_checks() {
    local suite=$1 wrong cursor status lines

    # D. Installed as a new user would, offline: apt takes ca-certificates from its cache.
    if ! in_ct apt-get install -y -q "/srv/in/$deb" >"$work/apt.log" 2>&1; then
        fail "$suite D apt install on a minimal tree (offline):"
        tail -n 5 "$work/apt.log"
        return
    fi
    # The first query starts the service (socket activation).
    wrong=$(local_zones_wrong; units_wrong)
    if [[ -n $(in_ct dpkg -V dns-proxy || true) ]]; then
        wrong+=" configuration changed: $(in_ct dpkg -V dns-proxy || true)"
    fi
    if [[ -z $wrong ]]; then
        pass "$suite D minimal tree, package defaults, no network: localhost answered, example.com SERVFAIL, service and socket active; Status: \"$(status_text)\""
    else
        fail "$suite D minimal tree, package defaults: $wrong"
        in_ct journalctl -u dns-proxy.service -u dns-proxy.socket -n 20 --no-pager
    fi

    # T. The trust store is empty at start (a slimmed image, a broken ca-certificates): the
    #    service starts all the same, answers local zones, says why in one line, and a reload
    #    once the store is back puts the upstreams in force.
    in_ct sh -c 'rm -rf /etc/ssl/certs/*'
    cursor=$(journal_cursor)
    in_ct systemctl restart dns-proxy.service || true
    wrong=$(local_zones_wrong; units_wrong)
    status=$(status_text)
    lines=$(journal_since "$cursor" 'CA certificates')
    if [[ -z $wrong && $status == *"No CA certificates"* && $(grep -c . <<<"$lines") == 1 ]]; then
        pass "$suite T empty trust store at start: service and socket active, local zones answered, SERVFAIL for the rest; journal: \"$lines\""
    else
        fail "$suite T empty trust store at start: ${wrong:-}; Status: '$status'; journal: '$lines'"
        in_ct journalctl -u dns-proxy.service -u dns-proxy.socket -n 20 --no-pager
    fi
    in_ct update-ca-certificates --fresh >/dev/null 2>&1 || echo "      update-ca-certificates failed"
    in_ct systemctl reload dns-proxy.service || true
    status=$(status_text)
    wrong=$(local_zones_wrong; units_wrong)
    if [[ -z $wrong && -n $status && $status != *degraded* ]]; then
        pass "$suite T after update-ca-certificates and a reload: Status: \"$status\""
    else
        fail "$suite T trust store restored and reloaded: ${wrong:-}; Status: '$status'"
    fi

    # C. A broken configuration at start: the same, and fixing the file and reloading is all
    #    it takes.
    echo 'timeout = "soon"' | in_ct tee /etc/dns-proxy/dns-proxy.d/broken.toml >/dev/null
    cursor=$(journal_cursor)
    in_ct systemctl restart dns-proxy.service || true
    wrong=$(local_zones_wrong; units_wrong)
    status=$(status_text)
    lines=$(journal_since "$cursor" 'broken.toml')
    local control
    control=$(in_ct dns-proxy status 2>&1 | grep -m1 'State:' || true)
    if [[ -z $wrong && $status == *broken.toml* && $(grep -c . <<<"$lines") == 1 &&
        $control == *"degraded, local zones only"*broken.toml* ]]; then
        pass "$suite C broken configuration at start: service and socket active, local zones answered; journal: \"$lines\"; dns-proxy status: \"${control#"${control%%[![:space:]]*}"}\""
    else
        fail "$suite C broken configuration at start: ${wrong:-}; Status: '$status'; journal: '$lines'; dns-proxy status: '$control'"
        in_ct journalctl -u dns-proxy.service -u dns-proxy.socket -n 20 --no-pager
    fi
    in_ct rm /etc/dns-proxy/dns-proxy.d/broken.toml
    in_ct systemctl reload dns-proxy.service || true
    status=$(status_text)
    if [[ $(units_wrong) == "" && -n $status && $status != *degraded* ]]; then
        pass "$suite C configuration fixed and reloaded: Status: \"$status\""
    else
        fail "$suite C configuration fixed and reloaded: $(units_wrong); Status: '$status'"
    fi
}

# --- sub-test: the .rpm, installed with rpm --root into a copy of the tree ------------------
rpm_checks() {
    local suite=$1 rpmtree=$work/rpmtree
    cp -a "$(tree "$suite" full)" "$rpmtree"
    rpm --root "$rpmtree" --dbpath /var/lib/rpm --nodeps -i "$work/in/dns-proxy.rpm" >"$work/rpm.log" 2>&1 ||
        { cat "$work/rpm.log"; fail "$suite 7 rpm install"; return; }
    config 1 >"$rpmtree/etc/dns-proxy/dns-proxy.toml"
    boot "$rpmtree"
    start_upstreams
    # The service started at boot, before the test's upstreams: start it again with them up.
    in_ct systemctl restart dns-proxy.service
    local owner
    owner=$(link_bus_owner)
    if [[ $(in_ct systemctl is-enabled dns-proxy.socket) == enabled &&
        $(in_ct systemctl is-active dns-proxy.socket) == active &&
        $(in_ct systemctl is-enabled dns-proxy.service) == enabled &&
        $owner == "$(main_pid) $(in_ct id -u dns-proxy 2>/dev/null)" ]] &&
        expect_answer "$answer_one" @127.0.0.1 && expect_answer "$answer_one" @::1 +tcp; then
        pass "$suite 7 rpm --root install: %post created the dns-proxy user and enabled dns-proxy.socket and .service; after boot the service owns org.freedesktop.resolve1 and answers"
    else
        fail "$suite 7 rpm: socket $(in_ct systemctl is-enabled dns-proxy.socket)/$(in_ct systemctl is-active dns-proxy.socket), service $(in_ct systemctl is-enabled dns-proxy.service), bus owner '$owner'"
        cat "$work/rpm.log"
    fi
    stop_container
    rm -rf "$rpmtree"
}

# --- the releases ---------------------------------------------------------------------------
# Each entry: a sub-test function, then any extra systemd-nspawn options its container needs
# (e.g. "name --system-call-filter=bpf --capability=CAP_BPF,CAP_NET_ADMIN").
# The IP allow list needs a systemd that really filters: nspawn lets it load BPF programs.
source "$repo/tests/system/allowlist.sh"
source "$repo/tests/system/tls.sh"
source "$repo/tests/system/link.sh"
full_tree_tests=(package_checks
    "allowlist_checks --system-call-filter=bpf --capability=CAP_BPF,CAP_SYS_ADMIN,CAP_NET_ADMIN"
    "tls_checks --system-call-filter=bpf --capability=CAP_BPF,CAP_SYS_ADMIN,CAP_NET_ADMIN"
    resolved_checks)
minimal_tree_tests=(default_config_checks)
# The .rpm goes into one release's tree: it checks files and scriptlets, not the release.
rpm_suite=bookworm
[[ " ${suites[*]} " == *" $rpm_suite "* ]] || rpm_suite=${suites[0]}
if [[ -n $given_deb ]]; then
    full_tree_tests=()
    rpm_suite=
fi
for suite in "${suites[@]}"; do
    for test in "${full_tree_tests[@]}"; do
        read -ra words <<<"$test"
        ! selected "${words[0]}" || in_container "$suite" full "${words[0]}" "${words[@]:1}"
    done
    for test in "${minimal_tree_tests[@]}"; do
        read -ra words <<<"$test"
        ! selected "${words[0]}" || in_container "$suite" minimal "${words[0]}" "${words[@]:1}"
    done
    [[ -n $given_deb ]] || ! selected link_checks || link_checks "$suite"
    [[ $suite != "$rpm_suite" ]] || ! selected rpm_checks || rpm_checks "$suite"
    rm -rf "${work:?}/$suite-full" "${work:?}/$suite-minimal"
    took "$suite done"
done

if ((failed)); then
    echo "system test: FAILED"
    exit 1
fi
echo "system test: all checks passed on ${suites[*]}"
