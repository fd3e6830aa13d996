# System test of the service's IP allow list: it follows the configuration at start and at
# every reload, with no unit edit, and nothing else is reachable from the service.
#
# Sourced by tests/system/run.sh, which runs allowlist_checks in a booted full tree of each
# release; uses its helpers (in_ct, pass, fail), its test CA and certificate in $work/in, and
# the .deb. The container boots with bpf() allowed: without it systemd inside nspawn silently runs the
# service unfiltered, and this test would prove nothing. Extra addresses (198.18.0.0/15, the
# benchmarking range) live on a veth pair with both ends in the container's own namespace:
#   A 198.18.0.1:853  DoT upstream answering probe.test with 192.0.2.11
#   B 198.18.0.2:853  DoT upstream answering probe.test with 192.0.2.12
#   C 198.18.0.3:53   plain resolver answering probe.corp.test with 192.0.2.13
# Each check prints one PASS or FAIL line.

allow_answer_a=192.0.2.11
allow_answer_b=192.0.2.12
allow_answer_c=192.0.2.13

unbound_conf '  interface: 198.18.0.1@853' test "$allow_answer_a" >"$work/in/upstream-a.conf"
unbound_conf '  interface: 198.18.0.2@853' test "$allow_answer_b" >"$work/in/upstream-b.conf"
unbound_conf '  interface: 198.18.0.3@53' corp.test "$allow_answer_c" >"$work/in/upstream-c.conf"

# A configuration: DoT upstream address, then extra top-level lines, then extra tables. With
# link_dns off, the list is the configuration's addresses alone (link_checks sees the ranges
# link_dns adds).
allow_config() {
    printf '# written by the allow-list test\nlink_dns = "off"\ndnssec = "off"\n%s\n[[upstream]]\naddress = "%s:853"\ntls_name = "upstream.test"\nca_file = "/etc/dns-proxy-test-ca.pem"\n%s\n' \
        "${2:-}" "$1" "${3:-}"
}
allow_zone_c='[[forward_zone]]
zones = ["corp.test"]
[[forward_zone.upstream]]
address = "198.18.0.3"
protocol = "udp"'

# The unit's list as a sorted, space-separated set (systemd keeps no order).
allow_list() { in_ct systemctl show -p IPAddressAllow --value dns-proxy.service | tr ' ' '\n' | sort | xargs; }
# What `check-config` says the list is, sorted the same way. In a clean environment: this
# shell's DNS_PROXY_* variables (DNS_PROXY_TESTBED_CACHE) would be configuration keys.
allow_list_checked() {
    in_ct env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dns-proxy check-config |
        sed -n 's/^# IPAddressAllow=//p' | tr ' ' '\n' | sort | xargs
}
allow_set() { printf '%s\n' "$@" | sort | xargs; }

# A TCP connection to ADDRESS PORT from a process moved into dns-proxy.service's own control
# group (the unified hierarchy, where systemd attaches the filter): 0 connected, 1 blocked or
# timed out, 2 the probe could not join the group. nsenter without -C: a process outside the
# container's cgroup namespace may move into any of its groups.
reach_from_service() {
    local cgroup
    cgroup=$(in_ct systemctl show -p ControlGroup --value dns-proxy.service)
    nsenter -t "$leader" -m -u -i -n -p -- bash -c '
        procs=/sys/fs/cgroup/unified$1/cgroup.procs
        [[ -e $procs ]] || procs=/sys/fs/cgroup$1/cgroup.procs
        echo $$ >"$procs" 2>/dev/null && grep -q "^0::.*$1\$" /proc/self/cgroup || exit 2
        timeout 2 bash -c "</dev/tcp/$2/$3" 2>/dev/null || exit 1' _ "$cgroup" "$1" "$2"
}
# The same connection from outside the service (the test's own shell in the container).
reach_from_outside() { in_ct timeout 2 bash -c "</dev/tcp/$1/$2" 2>/dev/null; }
# "reachable", "blocked" or "probe failed" from inside the service, for messages.
reach_word() {
    local status=0
    reach_from_service "$@" || status=$?
    case $status in
    0) echo reachable ;;
    1) echo blocked ;;
    *) echo "probe failed" ;;
    esac
}
# Expect ADDRESS PORT reachable from outside the service (so a block is the unit's doing) and
# WANT (reachable or blocked) from inside it.
expect_reach() {
    local got
    got=$(reach_word "$1" "$2")
    if ! reach_from_outside "$1" "$2"; then
        echo "    $1:$2 is not reachable even from outside the service"
        return 1
    fi
    [[ $got == "$3" ]] && return 0
    echo "    $1:$2 from inside dns-proxy.service: $got, want $3"
    return 1
}

# On a failure: the service's last lines, and what systemd said about installing the filter
# (a program it could not attach leaves the service unfiltered with only a warning).
allow_diagnose() {
    in_ct journalctl -u dns-proxy.service -n 20 --no-pager -o cat
    in_ct journalctl -b _PID=1 --no-pager -o cat | grep -iE 'bpf|firewall|IPAddress' | tail -n 10 || true
}

allowlist_checks() { # suite
    in_ct ip link add al0 type veth peer name al1
    in_ct ip addr add 198.18.0.1/32 dev al0
    in_ct ip addr add 198.18.0.3/32 dev al0
    in_ct ip addr add 198.18.0.2/32 dev al1
    in_ct ip link set al0 up
    in_ct ip link set al1 up
    in_ct cp /srv/in/test-upstream@.service /etc/systemd/system/
    in_ct cp /srv/in/ca.pem /etc/dns-proxy-test-ca.pem
    in_ct systemctl daemon-reload
    in_ct systemctl start test-upstream@a.service test-upstream@b.service test-upstream@c.service
    in_ct apt-get install -y -q "/srv/in/dns-proxy_${version}_$arch.deb" >"$work/apt.log" 2>&1 ||
        { cat "$work/apt.log"; die "apt install failed"; }
    for _ in $(seq 50); do
        reach_from_outside 198.18.0.1 853 && reach_from_outside 198.18.0.2 853 &&
            reach_from_outside 198.18.0.3 53 && break
        sleep 0.1
    done

    # allow-list 1: at start the list is the configuration's (A is in no unit file), check-config
    # prints the same list, and from inside the service B and C are blocked while reachable from
    # outside it: the filter is real.
    allow_config 198.18.0.1 | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    in_ct systemctl restart dns-proxy.service
    want=$(allow_set 127.0.0.0/8 ::1/128 198.18.0.1/32)
    ok=1
    expect_answer "$allow_answer_a" @127.0.0.1 || ok=0
    [[ $(allow_list) == "$want" && $(allow_list_checked) == "$want" ]] || ok=0
    expect_reach 198.18.0.1 853 reachable || ok=0
    expect_reach 198.18.0.2 853 blocked || ok=0
    expect_reach 198.18.0.3 53 blocked || ok=0
    if ((ok)); then
        pass "allow-list 1 start: IPAddressAllow=$(allow_list) (as check-config prints), answered by A; from the service's cgroup A connects, B and C are blocked (both reachable from outside it)"
    else
        fail "allow-list 1 start: list '$(allow_list)', check-config '$(allow_list_checked)', want '$want'"
        allow_diagnose
    fi

    # allow-list 2: reload onto B, an address outside the running list: answered by B with no unit
    # edit; A, no longer configured, is now blocked.
    allow_config 198.18.0.2 | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    in_ct systemctl reload dns-proxy.service
    want=$(allow_set 127.0.0.0/8 ::1/128 198.18.0.2/32)
    ok=1
    expect_answer "$allow_answer_b" @127.0.0.1 || ok=0
    [[ $(allow_list) == "$want" ]] || ok=0
    expect_reach 198.18.0.2 853 reachable || ok=0
    expect_reach 198.18.0.1 853 blocked || ok=0
    # The only drop-in is the one systemctl set-property wrote under /run.
    unit_edits=$(in_ct systemctl show -p DropInPaths --value dns-proxy.service)
    [[ $unit_edits == /run/systemd/system.control/dns-proxy.service.d/50-IPAddressAllow.conf ]] || ok=0
    if ((ok)); then
        pass "allow-list 2 reload to upstream B: answered by B, IPAddressAllow=$(allow_list), no unit file or drop-in but set-property's; A is now blocked from the service"
    else
        fail "allow-list 2 reload to B: list '$(allow_list)', want '$want'; drop-ins: '$unit_edits'"
        allow_diagnose
    fi

    # allow-list 3: a broken configuration naming A again fails the reload; B's list and answers stay.
    allow_config 198.18.0.1 'timeout = "soon"' | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    reload_status=0
    in_ct systemctl reload dns-proxy.service 2>/dev/null || reload_status=$?
    ok=1
    ((reload_status != 0)) || ok=0
    [[ $(allow_list) == "$want" && $(in_ct systemctl is-active dns-proxy.service) == active ]] || ok=0
    expect_answer "$allow_answer_b" @127.0.0.1 +tcp || ok=0
    expect_reach 198.18.0.1 853 blocked || ok=0
    if ((ok)); then
        pass "allow-list 3 broken config at reload: reload failed (status $reload_status), IPAddressAllow=$(allow_list) kept, B still answers, A still blocked"
    else
        fail "allow-list 3 broken config: reload status $reload_status, list '$(allow_list)', want '$want', state $(in_ct systemctl is-active dns-proxy.service)"
    fi

    # allow-list 4: a configuration naming A whose ca_file only root can see (ProtectHome= hides
    # /root from the daemon) fails the reload too, although the privileged step could read it.
    in_ct cp /etc/dns-proxy-test-ca.pem /root/test-ca.pem
    allow_config 198.18.0.1 | sed 's|/etc/dns-proxy-test-ca.pem|/root/test-ca.pem|' |
        in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    reload_status=0
    in_ct systemctl reload dns-proxy.service 2>/dev/null || reload_status=$?
    ok=1
    ((reload_status != 0)) || ok=0
    [[ $(allow_list) == "$want" ]] || ok=0
    expect_answer "$allow_answer_b" @127.0.0.1 || ok=0
    expect_reach 198.18.0.1 853 blocked || ok=0
    if ((ok)); then
        pass "allow-list 4 config the daemon cannot read (ca_file in /root) at reload: reload failed (status $reload_status), IPAddressAllow=$(allow_list) kept, B still answers"
    else
        fail "allow-list 4 ca_file in /root: reload status $reload_status, list '$(allow_list)', want '$want'"
        allow_diagnose
    fi

    # allow-list 5: a forward zone to the plain resolver C, outside the list, at reload.
    allow_config 198.18.0.2 '' "$allow_zone_c" | in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    in_ct systemctl reload dns-proxy.service
    want=$(allow_set 127.0.0.0/8 ::1/128 198.18.0.2/32 198.18.0.3/32)
    ok=1
    got_c=$(in_ct dig +short +tries=1 +timeout=2 @127.0.0.1 probe.corp.test A 2>/dev/null | head -n 1 || true)
    [[ $got_c == "$allow_answer_c" ]] || ok=0
    expect_answer "$allow_answer_b" @127.0.0.1 || ok=0
    [[ $(allow_list) == "$want" && $(allow_list_checked) == "$want" ]] || ok=0
    expect_reach 198.18.0.3 53 reachable || ok=0
    expect_reach 198.18.0.1 853 blocked || ok=0
    if ((ok)); then
        pass "allow-list 5 forward zone to plain resolver C at reload: probe.corp.test answered by C ($got_c), IPAddressAllow=$(allow_list); A still blocked"
    else
        fail "allow-list 5 forward zone: probe.corp.test '$got_c', list '$(allow_list)', want '$want'"
        allow_diagnose
    fi

    # allow-list 6: a broken configuration moving the zone to A fails the reload; C stays.
    allow_config 198.18.0.2 'timeout = "soon"' "${allow_zone_c/198.18.0.3/198.18.0.1}" |
        in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    reload_status=0
    in_ct systemctl reload dns-proxy.service 2>/dev/null || reload_status=$?
    ok=1
    ((reload_status != 0)) || ok=0
    [[ $(allow_list) == "$want" ]] || ok=0
    got_c=$(in_ct dig +short +tries=1 +timeout=2 +tcp @127.0.0.1 probe.corp.test A 2>/dev/null | head -n 1 || true)
    [[ $got_c == "$allow_answer_c" ]] || ok=0
    expect_reach 198.18.0.1 853 blocked || ok=0
    if ((ok)); then
        pass "allow-list 6 broken forward-zone config at reload: reload failed (status $reload_status), IPAddressAllow=$(allow_list) kept, C still answers probe.corp.test"
    else
        fail "allow-list 6 broken forward-zone config: reload status $reload_status, list '$(allow_list)', want '$want', probe.corp.test '$got_c'"
        allow_diagnose
    fi
}
