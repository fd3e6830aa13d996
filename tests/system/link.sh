# System test of link DNS as the packages set it up: NetworkManager managing a veth whose other
# end is a DHCP server pushes the lease's DNS server and search domains to the packaged
# dns-proxy.service over org.freedesktop.resolve1, at boot, with no DNS query needed.
#
# Sourced by tests/system/run.sh, which runs link_checks for each release; uses its helpers
# (boot, in_ct, stop_container, tree, pass, fail), the .deb in $work/in and allowlist.sh's
# reach_from_service / reach_from_outside. The full tree has network-manager installed and
# masked (the other sub-tests run without it). link_checks:
#
#   1st boot  (a copy of the full tree, kept): apt install the .deb; the service must be enabled,
#             running as the static dns-proxy user and owning org.freedesktop.resolve1 at once;
#             then NetworkManager is enabled with the packaged drop-in (dns=none) and
#             /etc/resolv.conf is linked to /run/dns-proxy/resolv.conf, as README says.
#   2nd boot  with one end of a veth pair (the container's only network); the other end is in a
#             network namespace of the test, where dnsmasq hands out 10.78.0.0/24 leases with
#             DNS server 10.78.0.1 and search domains corp.example and home.arpa, answers names
#             under them and logs every query. bpf() is allowed, so the IP allow list is real.
#             Before any DNS query: the service runs since boot and knows the link. Then a name
#             under corp.example is answered by dnsmasq through the sandboxed service, a single
#             label is qualified by the search list of /etc/resolv.conf, the link's server is on
#             the allow list and 198.18.0.9, on the same wire but not private, is not;
#             resolvectl (the release's own, from its systemd-resolved package, unpacked) shows
#             and queries the link.
# Each check prints one PASS or FAIL line.

link_server=10.78.0.1
link_answer=198.51.100.1 # dnsmasq's answer for any name under corp.example
link_home=198.51.100.4   # ... under home.arpa
link_public=198.18.0.9   # on dnsmasq's side too, but in no range the allow list opens
link_netns=
link_dnsmasq=

link_cleanup() {
    if [[ -n $link_dnsmasq ]]; then
        kill "$link_dnsmasq" 2>/dev/null || true
        wait "$link_dnsmasq" 2>/dev/null || true
        link_dnsmasq=
    fi
    if [[ -n $link_netns ]]; then
        ip netns del "$link_netns" 2>/dev/null || true
        link_netns=
    fi
}

# Service properties, one per line, as systemctl shows them.
link_unit() { in_ct systemctl show -p "$1" --value dns-proxy.service; }
# Who owns org.freedesktop.resolve1: "PID UID", or what went wrong.
link_bus_owner() {
    local pid uid
    pid=$(in_ct busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
        GetConnectionUnixProcessID s org.freedesktop.resolve1 2>&1) || { echo "$pid"; return; }
    uid=$(in_ct busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
        GetConnectionUnixUser s org.freedesktop.resolve1 2>&1) || { echo "$uid"; return; }
    echo "${pid#u } ${uid#u }"
}
# The queries dnsmasq was asked, one name per line.
link_server_saw() { sed -n 's/.* query\[[A-Z0-9]*\] \([^ ]*\) from .*/\1/p' "$work/link-dnsmasq.log" 2>/dev/null || true; }
# Queries the daemon answered on its DNS sockets so far (the "Queries:" lines of dns-proxy
# status: "udp: 3 answered (NOERROR 3), 0 dropped").
link_answered() {
    local total=0 count
    while read -r count; do
        total=$((total + count))
    done < <(in_ct dns-proxy status 2>/dev/null | sed -n 's/^ *[a-z]*: \([0-9]*\) answered.*/\1/p')
    echo "$total"
}

link_checks() { # suite
    local suite=$1 dir=$work/linktree veth=dpl$$c ok owner pid uid user_uid status answer
    rm -rf "$dir"
    cp -a "$(tree "$suite" full)" "$dir"

    # L1. Installed: the service is enabled and started on installation, as the static user
    #     of the package's sysusers.d file, and owns the bus name at once (postinst reloads
    #     the bus's policy after creating the user).
    boot "$dir"
    in_ct apt-get install -y -q "/srv/in/$deb" >"$work/apt.log" 2>&1 ||
        { cat "$work/apt.log"; fail "$suite L1 apt install"; stop_container; rm -rf "$dir"; return; }
    owner=
    for _ in $(seq 50); do
        owner=$(link_bus_owner)
        [[ $owner == [0-9]*" "[0-9]* ]] && break
        sleep 0.1
    done
    pid=$(link_unit MainPID)
    user_uid=$(in_ct id -u dns-proxy 2>/dev/null || echo none)
    if [[ $(in_ct systemctl is-enabled dns-proxy.service) == enabled && $(in_ct systemctl is-active dns-proxy.service) == active &&
        $owner == "$pid $user_uid" && $(in_ct getent passwd dns-proxy | cut -d: -f7) == */nologin ]]; then
        pass "$suite L1 apt install: dns-proxy.service enabled and running as the static user dns-proxy (uid $user_uid from sysusers.d, DynamicUser=yes), owning org.freedesktop.resolve1 (pid $pid)"
    else
        fail "$suite L1 apt install: service $(in_ct systemctl is-enabled dns-proxy.service)/$(in_ct systemctl is-active dns-proxy.service), bus owner '$owner', MainPID $pid, dns-proxy uid $user_uid"
        in_ct journalctl -u dns-proxy.service -n 20 --no-pager -o cat | sed 's/^/      /'
    fi
    # As README says for a NetworkManager host.
    in_ct cp /usr/share/doc/dns-proxy/examples/90-dns-proxy.conf /etc/NetworkManager/conf.d/
    in_ct ln -sf /run/dns-proxy/resolv.conf /etc/resolv.conf
    in_ct systemctl unmask NetworkManager.service >/dev/null 2>&1
    in_ct systemctl enable NetworkManager.service >/dev/null 2>&1
    stop_container

    # The network: dnsmasq in a namespace of the test, one end of the veth; the other end
    # becomes the container's only interface.
    link_netns=dplink-sys-$$
    ip netns add "$link_netns"
    ip link add dplh$$ netns "$link_netns" type veth peer name "$veth"
    ip -n "$link_netns" link set lo up
    ip -n "$link_netns" addr add "$link_server/24" dev "dplh$$"
    ip -n "$link_netns" addr add "$link_public/32" dev "dplh$$"
    ip -n "$link_netns" link set "dplh$$" up
    : >"$work/link-dnsmasq.log"
    nsenter --net="/run/netns/$link_netns" dnsmasq --keep-in-foreground --user=root --no-resolv --no-hosts \
        --bind-interfaces --interface="dplh$$" --except-interface=lo --dhcp-range=10.78.0.100,10.78.0.150,255.255.255.0,10m \
        --dhcp-option=option:router,$link_server --dhcp-option=option:dns-server,$link_server \
        --dhcp-option=option:domain-search,corp.example,home.arpa --dhcp-leasefile="$work/link-dnsmasq.leases" \
        --local-ttl=60 --address=/corp.example/$link_answer --address=/home.arpa/$link_home \
        --log-queries --log-facility="$work/link-dnsmasq.log" --pid-file="$work/link-dnsmasq.pid" \
        2>"$work/link-dnsmasq.err" &
    link_dnsmasq=$!

    # L2. Booted with NetworkManager: before any DNS query, the service runs since boot and
    #     holds the lease's server and domains.
    boot "$dir" --network-interface="$veth" --system-call-filter=bpf --capability=CAP_BPF,CAP_SYS_ADMIN,CAP_NET_ADMIN
    status=
    for _ in $(seq 300); do
        status=$(in_ct dns-proxy status 2>/dev/null || true)
        [[ $status == *"$veth"* && $status == *"$link_server"* && $status == *corp.example* ]] && break
        sleep 0.1
    done
    local answered before_queries
    answered=$(link_answered)
    before_queries=$(link_server_saw | wc -l)
    if [[ $status == *"$veth"* && $status == *"$link_server"* && $status == *corp.example* &&
        $(in_ct systemctl is-active dns-proxy.service) == active && $answered == 0 && $before_queries == 0 ]]; then
        pass "$suite L2 boot: NetworkManager's lease on $veth (server $link_server, corp.example home.arpa) reached the service started at boot, before any DNS query (0 answered, dnsmasq asked nothing)"
    else
        fail "$suite L2 boot: service $(in_ct systemctl is-active dns-proxy.service), $answered queries answered, dnsmasq asked $before_queries; status:"
        sed 's/^/      /' <<<"$status"
        in_ct journalctl -u NetworkManager.service -n 15 --no-pager -o cat | sed 's/^/      /'
    fi

    # L3. The first query: answered by the link's server through the service under its
    #     sandbox; a single label through the search list of /etc/resolv.conf (a symlink to
    #     the service's file).
    answer=$(in_ct dig +short +tries=1 +timeout=3 @127.0.0.1 probe.corp.example A 2>/dev/null | head -n 1 || true)
    local short resolv
    # As a user: /etc/resolv.conf and the file it links to must be readable by everyone.
    short=$(in_ct setpriv --reuid=nobody --regid=nogroup --clear-groups getent ahostsv4 printer 2>/dev/null |
        awk 'NR == 1 {print $1}' || true)
    resolv=$(in_ct grep -v '^#' /etc/resolv.conf 2>/dev/null | paste -sd';' || true)
    if [[ $answer == "$link_answer" && $(link_server_saw | grep -cx probe.corp.example) == 1 &&
        $short == "$link_answer" && $(link_server_saw | grep -cx printer.corp.example) == 1 &&
        $resolv == *"search corp.example home.arpa"* ]]; then
        pass "$suite L3 dig probe.corp.example: $answer from the link's server (dnsmasq logged it); getent ahostsv4 printer as nobody: $short, asked as printer.corp.example through /etc/resolv.conf -> /run/dns-proxy/resolv.conf ($resolv)"
    else
        fail "$suite L3 dig probe.corp.example: '$answer' (dnsmasq saw: $(link_server_saw | paste -sd' ')); getent printer: '$short'; /etc/resolv.conf: '$resolv'"
        in_ct journalctl -u dns-proxy.service -n 20 --no-pager -o cat | sed 's/^/      /'
    fi

    # L4. The sandbox: the link's server is reachable from the service's control group, an
    #     address on the same wire outside the ranges link_dns opens is not (yet reachable
    #     from outside the service).
    local allow
    allow=$(link_unit IPAddressAllow)
    ok=1
    [[ " $allow " == *" 10.0.0.0/8 "* && " $allow " == *" 169.254.0.0/16 "* && " $allow " == *" fc00::/7 "* ]] || ok=0
    expect_reach "$link_server" 53 reachable || ok=0
    expect_reach "$link_public" 53 blocked || ok=0
    if ((ok)); then
        pass "$suite L4 sandbox: IPAddressAllow=$allow; from the service's cgroup $link_server:53 connects, $link_public:53 (not private) is blocked"
    else
        fail "$suite L4 sandbox: IPAddressAllow='$allow'"
        # Whether a fresh start of the service (a new control group and filter) changes it.
        in_ct systemctl restart dns-proxy.service
        echo "      after a restart: $link_server:53 $(reach_word "$link_server" 53), $link_public:53 $(reach_word "$link_public" 53)"
    fi

    # L5. resolvectl of this release (its systemd-resolved package unpacked, not installed):
    #     status shows the link, query goes through the service.
    local resolvectl=/usr/bin/resolvectl rc_status rc_query
    if ! in_ct test -x "$resolvectl"; then
        resolvectl=/tmp/resolved/usr/bin/resolvectl
        in_ct sh -c 'dpkg-deb -x /var/cache/apt/archives/systemd-resolved_*.deb /tmp/resolved' || true
    fi
    rc_status=$(in_ct "$resolvectl" status "$veth" 2>&1 || true)
    rc_query=$(in_ct "$resolvectl" query probe.home.arpa 2>&1 || true)
    if [[ $rc_status == *"DNS Servers: $link_server"* && $rc_status == *"DNS Domain: corp.example home.arpa"* &&
        $rc_query == *"$link_home"* ]]; then
        pass "$suite L5 $(in_ct "$resolvectl" --version | head -n 1): status $veth shows $link_server and corp.example home.arpa; query probe.home.arpa: $link_home"
    else
        fail "$suite L5 resolvectl:"
        sed 's/^/      /' <<<"$rc_status"
        sed 's/^/      /' <<<"$rc_query"
        in_ct journalctl -u dns-proxy.service -n 10 --no-pager -o cat | sed 's/^/      /'
    fi

    stop_container
    link_cleanup
    rm -rf "$dir"
}

# R. Beside systemd-resolved (installed from the release's package in apt's cache; part of
#    systemd itself on Debian 11): the package enables nothing and says why; switching over as
#    dns-proxy(8) says gives dns-proxy the bus name; the units conflict both ways.
resolved_checks() { # suite
    local suite=$1 out
    if in_ct sh -c 'ls /var/cache/apt/archives/systemd-resolved_*.deb' >/dev/null 2>&1; then
        in_ct sh -c 'apt-get install -y -q /var/cache/apt/archives/systemd-resolved_*.deb' >"$work/apt.log" 2>&1 ||
            { cat "$work/apt.log"; fail "$suite R installing systemd-resolved"; return; }
    fi
    in_ct systemctl enable --now systemd-resolved.service >/dev/null 2>&1
    out=$(in_ct apt-get install -y -q "/srv/in/$deb" 2>&1) ||
        { echo "$out"; fail "$suite R apt install beside systemd-resolved"; return; }
    if [[ $out == *"systemd-resolved serves this host"* &&
        $(in_ct systemctl is-enabled dns-proxy.socket dns-proxy.service | sort -u) == disabled &&
        $(in_ct systemctl is-active dns-proxy.socket dns-proxy.service | sort -u) == inactive &&
        $(in_ct systemctl is-active systemd-resolved.service) == active ]]; then
        pass "$suite R apt install beside systemd-resolved: socket and service left disabled and stopped, systemd-resolved still active, and postinst says so"
    else
        fail "$suite R apt install beside systemd-resolved: socket/service enabled '$(in_ct systemctl is-enabled dns-proxy.socket dns-proxy.service | paste -sd/)', active '$(in_ct systemctl is-active dns-proxy.socket dns-proxy.service | paste -sd/)', systemd-resolved $(in_ct systemctl is-active systemd-resolved.service)"
        grep dns-proxy <<<"$out" | sed 's/^/      /'
    fi

    in_ct systemctl disable --now systemd-resolved.service >/dev/null 2>&1
    in_ct systemctl enable --now dns-proxy.socket dns-proxy.service >/dev/null 2>&1
    local took_over expected
    for _ in $(seq 50); do
        took_over=$(link_bus_owner)
        expected="$(main_pid) $(in_ct id -u dns-proxy)"
        [[ $took_over == "$expected" ]] && break
        sleep 0.1
    done
    in_ct systemctl start systemd-resolved.service
    local after_resolved
    after_resolved=$(in_ct systemctl is-active dns-proxy.service || true)
    in_ct systemctl start dns-proxy.service
    local resolved_now=
    for _ in $(seq 50); do
        resolved_now=$(in_ct systemctl is-active systemd-resolved.service || true)
        [[ $resolved_now == inactive ]] && break
        sleep 0.1
    done
    if [[ $took_over == "$expected" && $after_resolved == inactive && $resolved_now == inactive ]]; then
        pass "$suite R switched over: dns-proxy owns org.freedesktop.resolve1; starting systemd-resolved stops dns-proxy.service and starting dns-proxy.service stops systemd-resolved (Conflicts=)"
    else
        fail "$suite R switched over: bus owner '$took_over' (want pid and uid '$expected'); after starting systemd-resolved dns-proxy.service was '$after_resolved'; systemd-resolved now $resolved_now"
    fi
}
