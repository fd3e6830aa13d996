# System test of DNS over TLS and DNS over HTTPS for clients, set up the documented way: the
# package's example socket units and drop-ins, a private CA made with openssl, the key
# readable by root only and handed to the service with LoadCredential=, under the packaged
# sandbox.
#
# Sourced by tests/system/run.sh, which runs tls_checks in a booted full tree of each release;
# uses its helpers (in_ct, pass, fail), its test upstream configuration writer and the .deb.
# The container boots with bpf() allowed, so that the service's IPAddressDeny=any is really in
# force (see allowlist.sh). The upstream is unbound over DoT on 127.0.0.2:8853, not on 853:
# the example socket listens on port 853 of every address. A veth pair inside the container's
# own namespace gives two clients beyond loopback:
#   198.18.0.1  the host's LAN address (the socket listens there too), and a client in `allow`
#   198.18.0.2  a client outside `allow`
# Each check prints one PASS or FAIL line (and INFO lines for what is observed, not asserted).

tls_answer=192.0.2.2
unbound_conf '  interface: 127.0.0.2@8853' test "$tls_answer" |
    sed 's/^  tls-port: 853$/  tls-port: 8853/' >"$work/in/upstream-tls.conf"

tls_examples=/usr/share/doc/dns-proxy/examples
tls_ca=/root/dns-ca/ca.pem # the clients' trust anchor, made in the container
# kdig to NAME over TLS (+tls) or HTTPS (+https) with the private CA; prints the A record or
# nothing. Extra kdig arguments go first (server, port, source, transport).
tls_ask() {
    in_ct kdig +short +timeout=2 +retry=0 +tls-ca="$tls_ca" +tls-hostname=dns.test "$@" \
        probe.test A 2>/dev/null | head -n 1 || true
}
# Waits up to 5 s for kdig with these arguments to get the upstream's answer.
tls_expect() {
    local got=
    for _ in $(seq 25); do
        got=$(tls_ask "$@")
        [[ $got == "$tls_answer" ]] && return 0
        sleep 0.2
    done
    echo "    kdig $* probe.test: got '${got}', want '$tls_answer'"
    return 1
}
# The serial number of the certificate served on 127.0.0.1:PORT.
served_serial() {
    in_ct sh -c "openssl s_client -connect 127.0.0.1:$1 -servername dns.test -alpn $2 </dev/null 2>/dev/null |
        openssl x509 -noout -serial" 2>/dev/null | sed 's/^serial=//' || true
}
# The private CA and a server certificate for dns.test (plus the addresses clients use), as
# README "Serve a network privately" makes them; the key goes to /etc/dns-proxy/tls/ with mode
# 0600, owned by root. With an argument: a renewed pair in that directory instead.
make_server_cert() {
    in_ct sh -euc '
        umask 077
        mkdir -p /root/dns-ca
        cd /root/dns-ca
        if [ ! -e ca.key ]; then
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
                -subj "/CN=dns-proxy test private CA" -keyout ca.key -out ca.pem 2>/dev/null
        fi
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=dns.test \
            -keyout server.key -out server.csr 2>/dev/null
        printf "subjectAltName=DNS:dns.test,IP:127.0.0.1,IP:::1,IP:198.18.0.1\nextendedKeyUsage=serverAuth\n" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 397 \
            -extfile server.ext -out server.pem 2>/dev/null
        if [ -n "${1:-}" ]; then
            mkdir -p "$1"
            mv server.key "$1/privkey.pem"
            mv server.pem "$1/fullchain.pem"
        else
            install -d -m 0755 /etc/dns-proxy/tls
            install -m 0600 -o root -g root server.key /etc/dns-proxy/tls/key.pem
            install -m 0644 -o root -g root server.pem /etc/dns-proxy/tls/cert.pem
        fi' _ "${1:-}"
}

tls_checks() { # suite
    local suite=$1
    in_ct ip link add tl0 type veth peer name tl1
    in_ct ip addr add 198.18.0.1/32 dev tl0
    in_ct ip addr add 198.18.0.2/32 dev tl1
    in_ct ip link set tl0 up
    in_ct ip link set tl1 up
    in_ct cp /srv/in/test-upstream@.service /etc/systemd/system/
    in_ct cp /srv/in/ca.pem /etc/dns-proxy-test-ca.pem
    in_ct systemctl daemon-reload
    in_ct systemctl start test-upstream@tls.service
    in_ct apt-get install -y -q "/srv/in/$deb" >"$work/apt.log" 2>&1 ||
        { cat "$work/apt.log"; die "apt install failed"; }
    printf '# edited by the TLS system test\ndnssec = "off"\n[[upstream]]\naddress = "127.0.0.2:8853"\ntls_name = "upstream.test"\nca_file = "/etc/dns-proxy-test-ca.pem"\n' |
        in_ct tee /etc/dns-proxy/dns-proxy.toml >/dev/null
    local before
    before=$(in_ct systemd-analyze security --no-pager dns-proxy.service 2>/dev/null |
        sed -n 's/.*Overall exposure level for dns-proxy.service: *\([0-9.]*\).*/\1/p')

    # The documented set-up, from the package's examples: certificate and key, the two socket
    # units, the credentials drop-in and the configuration drop-in with the clients' network.
    make_server_cert
    in_ct mkdir -p /etc/systemd/system/dns-proxy.service.d /etc/dns-proxy/dns-proxy.d
    in_ct cp "$tls_examples/dns-proxy-tls.socket" "$tls_examples/dns-proxy-https.socket" /etc/systemd/system/
    in_ct cp "$tls_examples/tls-credentials.conf" /etc/systemd/system/dns-proxy.service.d/
    in_ct sed 's|^allow = .*|allow = ["127.0.0.0/8", "::1/128", "198.18.0.1/32"]|' \
        "$tls_examples/tls.toml" | in_ct tee /etc/dns-proxy/dns-proxy.d/tls.toml >/dev/null
    in_ct systemctl daemon-reload
    # The package started the service: systemd starts no new socket for a running service.
    in_ct systemctl stop dns-proxy.service
    in_ct systemctl enable --now dns-proxy-tls.socket dns-proxy-https.socket >/dev/null 2>&1
    in_ct systemctl start dns-proxy.service

    # tls 1: PID 1 holds port 853 and 443; kdig gets answers over DoT and DoH (HTTP/2, POST and
    # GET), IPv4 and IPv6, validating the private CA and the name; a client trusting another
    # CA gets none; plain DNS on port 53 still answers.
    local listeners ok=1 got_other plain
    listeners=$(in_ct ss -H -lntp)
    grep -q ':853 .*"systemd",pid=1,' <<<"$listeners" && grep -q ':443 .*"systemd",pid=1,' <<<"$listeners" || ok=0
    tls_expect @127.0.0.1 -p 853 +tls || ok=0
    tls_expect @::1 -p 853 +tls || ok=0
    tls_expect @127.0.0.1 -p 443 +https || ok=0
    tls_expect @::1 -p 443 +https +https-get || ok=0
    got_other=$(in_ct kdig +short +timeout=2 +retry=0 +tls-ca=/etc/dns-proxy-test-ca.pem \
        +tls-hostname=dns.test @127.0.0.1 -p 853 probe.test A 2>/dev/null | head -n 1 || true)
    [[ -z $got_other ]] || ok=0
    plain=$(ask @127.0.0.1)
    [[ $plain == "$tls_answer" ]] || ok=0
    if ((ok)); then
        pass "$suite tls 1 example sockets enabled: PID 1 holds :853 and :443; kdig +tls and +https (POST, GET) over IPv4 and IPv6 answered with the private CA; a client trusting another CA got nothing; plain DNS still answers"
    else
        fail "$suite tls 1 DoT/DoH through the example sockets: other-CA client got '$got_other', plain DNS '$plain'; listeners:"
        echo "$listeners"
        in_ct journalctl -u dns-proxy.service -n 30 --no-pager -o cat
    fi

    # tls 2: the key stays root-only and the dynamic user reads it only through its credential:
    # in the service's own mount namespace and with its uid, the credential (the same bytes) can
    # be read and /etc/dns-proxy/tls/key.pem cannot.
    local pid uid mode credentials cred_ok=0 file_denied=0
    pid=$(main_pid)
    uid=$(in_ct awk '/^Uid:/ {print $2}' "/proc/$pid/status")
    mode=$(in_ct stat -c '%a %U:%G' /etc/dns-proxy/tls/key.pem)
    credentials=$(in_ct sh -c "tr '\\0' '\\n' </proc/$pid/environ" | sed -n 's/^CREDENTIALS_DIRECTORY=//p')
    tls_as_service() { in_ct nsenter -t "$pid" -m setpriv --reuid="$uid" --regid="$uid" --clear-groups "$@"; }
    if [[ -n $credentials ]] && tls_as_service cat "$credentials/tls-key" 2>/dev/null |
        in_ct cmp -s - /etc/dns-proxy/tls/key.pem; then
        cred_ok=1
    fi
    tls_as_service cat /etc/dns-proxy/tls/key.pem >/dev/null 2>&1 || file_denied=1
    if [[ $mode == "600 root:root" && $uid != 0 && $cred_ok == 1 && $file_denied == 1 ]]; then
        pass "$suite tls 2 key.pem is $mode; the service (uid $uid) reads it as $credentials/tls-key and cannot open /etc/dns-proxy/tls/key.pem"
    else
        fail "$suite tls 2 key mode '$mode', service uid '$uid', CREDENTIALS_DIRECTORY '$credentials', credential readable and equal: $cred_ok, key.pem denied: $file_denied"
    fi

    # tls 3: the sandbox lets a client beyond loopback in (the sockets are systemd's, not
    # subject to the service's IPAddressDeny=any, which is in force here), `allow` admits the
    # client's address and refuses another one, and the exposure score stays what it was.
    local lan refused after threshold_ok=0
    lan=$(tls_ask @198.18.0.1 -p 853 +tls -b 198.18.0.1)
    refused=$(in_ct kdig +timeout=2 +retry=0 +tls-ca="$tls_ca" +tls-hostname=dns.test @198.18.0.1 -p 853 \
        -b 198.18.0.2 probe.test A 2>/dev/null | grep -o 'status: [A-Z]*' || true)
    after=$(in_ct systemd-analyze security --no-pager dns-proxy.service 2>/dev/null |
        sed -n 's/.*Overall exposure level for dns-proxy.service: *\([0-9.]*\).*/\1/p')
    awk -v a="$after" -v b="$before" 'BEGIN { exit !(a != "" && a <= b && a <= 1.0) }' && threshold_ok=1
    if [[ $lan == "$tls_answer" && $refused == "status: REFUSED" && $threshold_ok == 1 &&
        $(in_ct systemctl show -p IPAddressDeny --value dns-proxy.service) == *0.0.0.0/0* ]]; then
        pass "$suite tls 3 from 198.18.0.1 (in allow) answered over DoT, 198.18.0.2 REFUSED, with IPAddressDeny=any in force; exposure $after with the drop-in ($before without)"
    else
        fail "$suite tls 3 LAN client got '$lan', outside client '$refused' (want REFUSED); exposure $after with the drop-in, $before without"
    fi

    # tls 4: a reload works with the credentials (every ExecReload= step reads the
    # configuration, which names them) and DoT still answers; then renewal through the example
    # deploy hook, as certbot runs it: the new certificate is served after the hook, the key is
    # still root-only, and clients get answers.
    local old_serial new_serial renewed_serial reloaded_serial reload_status=0
    old_serial=$(served_serial 853 dot)
    make_server_cert /root/renewed
    renewed_serial=$(in_ct openssl x509 -noout -serial -in /root/renewed/fullchain.pem | sed 's/^serial=//')
    # Observed, not asserted: does a reload pick up files changed on disk? (systemd copies
    # credentials at start; newer versions can refresh them on reload.)
    in_ct cp /etc/dns-proxy/tls/key.pem /root/key.pem.old
    in_ct cp /etc/dns-proxy/tls/cert.pem /root/cert.pem.old
    in_ct install -m 0600 /root/renewed/privkey.pem /etc/dns-proxy/tls/key.pem
    in_ct install -m 0644 /root/renewed/fullchain.pem /etc/dns-proxy/tls/cert.pem
    in_ct systemctl reload dns-proxy.service || reload_status=$?
    sleep 0.5
    reloaded_serial=$(served_serial 853 dot)
    echo "INFO  $suite tls 4 after replacing the files and a reload (no restart) the served serial is ${reloaded_serial:-none} (old $old_serial, new $renewed_serial)"
    in_ct install -m 0600 /root/key.pem.old /etc/dns-proxy/tls/key.pem
    in_ct install -m 0644 /root/cert.pem.old /etc/dns-proxy/tls/cert.pem
    # A configuration naming a credential that does not exist is refused at reload.
    local bad_reload=0
    echo 'tls_key = "no-such-credential"' | in_ct tee /etc/dns-proxy/dns-proxy.d/zz-bad.toml >/dev/null
    in_ct systemctl reload dns-proxy.service 2>/dev/null || bad_reload=$?
    in_ct rm /etc/dns-proxy/dns-proxy.d/zz-bad.toml
    tls_expect @127.0.0.1 -p 853 +tls || bad_reload=0
    in_ct install -m 0755 "$tls_examples/dns-proxy-tls-deploy-hook" /usr/local/sbin/dns-proxy-tls-deploy-hook
    local hook_status=0
    in_ct env RENEWED_LINEAGE=/root/renewed /usr/local/sbin/dns-proxy-tls-deploy-hook || hook_status=$?
    ok=1
    ((reload_status == 0 && bad_reload != 0 && hook_status == 0)) || ok=0
    tls_expect @127.0.0.1 -p 853 +tls || ok=0
    tls_expect @127.0.0.1 -p 443 +https || ok=0
    new_serial=$(served_serial 853 dot)
    mode=$(in_ct stat -c '%a %U:%G' /etc/dns-proxy/tls/key.pem)
    [[ -n $old_serial && $new_serial == "$renewed_serial" && $new_serial != "$old_serial" && $mode == "600 root:root" ]] || ok=0
    if ((ok)); then
        pass "$suite tls 4 reload succeeded, a reload naming a missing credential failed (status $bad_reload) and DoT kept answering; deploy hook (RENEWED_LINEAGE as certbot sets it): serial $old_serial -> $new_serial served on :853, key.pem $mode, DoT and DoH answered"
    else
        fail "$suite tls 4 reload exit $reload_status, bad reload exit $bad_reload (want non-zero, then answers), deploy hook exit $hook_status: served serial '$new_serial', renewed '$renewed_serial', old '$old_serial', key mode '$mode'"
        in_ct journalctl -u dns-proxy.service -n 20 --no-pager -o cat
    fi
}
