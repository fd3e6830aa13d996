"""The forwarders bench/run compares, and the second upstream of the light load. See bench/README.md.

Each forwarder has a row name, a plain DNS port, a DoT and a DoH port for its client-facing
listeners, a program, a version command and a configuration (`config_for`) forwarding over
DoT to the upstream on loopback and validating its certificate. The DoT upstream itself and the
certificates are in common.py.
"""

import os
import shutil

from common import (BINARY, TLS_NAME, UNBOUND_COMMON, UPSTREAM_DOH, UPSTREAM_DOT, UPSTREAM_UDP,
                    unbound_remote_control, unbound_upstream_server, version_of_all)
from links import control_socket

APT_PACKAGES = ["dnsperf", "unbound", "stubby", "dnsdist", "knot-resolver",
                # The signed world of the DNSSEC workloads (tests/dnssec/world.sh): knotd, keymgr,
                # kzonesign.
                "knot", "knot-dnssecutils",
                # The per-link DNS workloads (links.py): dbus-daemon; busctl is systemd's.
                "dbus"]
# Services those packages may register (Debian 12); stopped/disabled after installation.
SERVICES = ["unbound", "unbound-resolvconf", "stubby", "dnsdist", "kresd@1", "knot-resolver"]

# The second kind of upstream: dnsdist serving DoT (it sets TCP_NODELAY on its TLS sockets,
# unbound 1.17 does not) and plain DNS, in front of the same unbound over UDP.
NODELAY_DOT = 8854
NODELAY_UDP = 8054
# Upstream kinds of the light-load workloads: (DoT port, plain UDP port of the same server).
UPSTREAM_KINDS = {"unbound": (UPSTREAM_DOT, UPSTREAM_UDP), "dnsdist": (NODELAY_DOT, NODELAY_UDP),
                  "unbound-doh": (UPSTREAM_DOH, UPSTREAM_UDP)}
UPSTREAM_KIND_LABEL = {"unbound": "unbound 1.17 DoT (Nagle on)",
                       "dnsdist": "dnsdist DoT (TCP_NODELAY)",
                       "unbound-doh": "unbound 1.17 DoH (HTTP/2, same server)"}
FWD_PORT = {
    "dns-proxy": 5301,
    "unbound": 5302,
    "stubby": 5303,
    "dnsdist": 5304,
    "dnsdist+cache": 5305,
    "kresd": 5306,
}
FORWARDERS = list(FWD_PORT)
# Client-facing DNS over TLS and DNS over HTTPS (the DoT-in and DoH-in workloads): a listener of
# that kind beside the forwarder's plain port.
TRANSPORTS = {"dot": "DNS over TLS", "doh": "DNS over HTTPS"}
ENCRYPTED_PORT = {"dot": {name: port + 100 for name, port in FWD_PORT.items()},
                  "doh": {name: port + 200 for name, port in FWD_PORT.items()}}
DOH_PATH = "/dns-query"


def nodelay_upstream_conf(d):
    """dnsdist as a DoT server with TCP_NODELAY, answering from the unbound upstream's UDP port."""
    return f"""setSecurityPollSuffix("")
setLocal("127.0.0.1:{NODELAY_UDP}")
addTLSLocal("127.0.0.1:{NODELAY_DOT}", "{d}/upstream.pem", "{d}/upstream.key", {{provider="openssl"}})
setACL({{"127.0.0.0/8"}})
newServer({{address="127.0.0.1:{UPSTREAM_UDP}", checkName="bench."}})
"""


# The DNSSEC workloads' upstream: the signed test world (tests/dnssec/world.sh, built in
# WORLD_DIR under the work dir) served by knotd on WORLD_AUTH, resolved by an unbound that
# does not validate, serving DoT on WORLD_DOT and plain DNS on WORLD_UDP (its DNSSEC records
# and AD-less answers pass on to the forwarders, which validate or not).
WORLD_DOT = 8855
WORLD_UDP = 8055
WORLD_AUTH = 8056
WORLD_DIR = "world"
# The forwarders the DNSSEC workloads compare, each validating against the world's root
# anchor and not validating.
VALIDATORS = ["dns-proxy", "unbound"]


def world_upstream_conf(d):
    """The DNSSEC workloads' upstream: unbound, iterator only, forwarding to knotd."""
    return unbound_upstream_server(d, WORLD_DOT, WORLD_UDP) + f"""\
  do-not-query-localhost: no
  local-zone: "test." nodefault
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{WORLD_AUTH}
""" + unbound_remote_control(d, "world-upstream.ctl")


def encrypted_unsupported(name, transport):
    """Why `name` cannot serve `transport` ("dot" or "doh") to clients, or None if it can (as
    far as its build says; a forwarder that then does not come up is reported as such)."""
    if name == "stubby":
        return "stubby is a stub resolver: it serves only plain DNS to its clients"
    if name == "unbound" and transport == "doh" and "--with-libnghttp2" not in version_of_all(["unbound", "-V"]):
        return "this unbound is built without libnghttp2: no DNS over HTTPS"
    if name in ("dnsdist", "dnsdist+cache"):
        feature = {"dot": "dns-over-tls", "doh": "dns-over-https(DOH)"}[transport]
        if feature not in version_of_all(["dnsdist", "--version"]):
            return f"this dnsdist is built without {feature}"
    return None


def upstream_unsupported(name, upstream):
    """Why `name` cannot forward to the upstream on port `upstream` (DoH on UPSTREAM_DOH), or
    None."""
    if upstream != UPSTREAM_DOH:
        return None
    if name in ("dnsdist", "dnsdist+cache"):
        if "outgoing-dns-over-https" not in version_of_all(["dnsdist", "--version"]):
            return "this dnsdist is built without outgoing DNS over HTTPS (nghttp2)"
        return None
    if name == "dns-proxy":
        return None
    return f"{name} cannot forward over DNS over HTTPS"


def config_for(name, d, port, upstream=UPSTREAM_DOT, encrypted=None, dnssec=False, links=False):
    """(command, files to write {path: text}, cwd) for one forwarder of the DoT server on
    127.0.0.1:`upstream` (its DoH service when `upstream` is UPSTREAM_DOH), with a DoT ("dot")
    or DoH ("doh") listener for clients on ENCRYPTED_PORT if `encrypted` says so, validating
    DNSSEC against the test world's root anchor if `dnssec` (dns-proxy and unbound only;
    nobody validates otherwise). dns-proxy takes per-link DNS over the system bus (links.py)
    only if `links`: otherwise `link_dns = "off"`, no link configured."""
    anchor = f"{d}/{WORLD_DIR}/root.ds"
    UPSTREAM_DOT = upstream  # noqa: N806 (the templates below name the port so)
    doh = upstream == UPSTREAM_DOH
    ca = f"{d}/ca.pem"
    cert, key = f"{d}/listener.pem", f"{d}/listener.key"
    enc_port = ENCRYPTED_PORT[encrypted][name] if encrypted else None
    if name == "dns-proxy":
        conf = f"{d}/dns-proxy.toml"
        listener = ""
        if encrypted:
            listener = (f'listen_{"tls" if encrypted == "dot" else "https"} = ["127.0.0.1:{enc_port}"]\n'
                        f'tls_certificate = "{cert}"\ntls_key = "{key}"\n')
        where = (f'url = "https://{TLS_NAME}:{UPSTREAM_DOT}{DOH_PATH}"\naddress = "127.0.0.1"\n' if doh
                 else f'address = "127.0.0.1:{UPSTREAM_DOT}"\ntls_name = "{TLS_NAME}"\n')
        validation = (f'dnssec = "validate"\ntrust_anchors = "{anchor}"\n' if dnssec
                      else 'dnssec = "off"\n')
        link_dns = (f'link_dns = "domains"\ncontrol_socket = "{control_socket(d)}"\n' if links
                    else 'link_dns = "off"\n')
        text = (f'listen = ["127.0.0.1:{port}"]\n{listener}timeout = "2000ms"\nlog_level = "warn"\n'
                f'{validation}{link_dns}\n[[upstream]]\n{where}ca_file = "{ca}"\n')
        return ([BINARY, "--config", conf, "--listen", f"127.0.0.1:{port}", "--log", "stderr"],
                {conf: text}, d)
    if name == "unbound":
        conf = f"{d}/unbound-fwd.conf"
        listener = ""
        if encrypted:
            listener = (f"  interface: 127.0.0.1@{enc_port}\n"
                        f"  {'tls-port' if encrypted == 'dot' else 'https-port'}: {enc_port}\n"
                        f'  tls-service-key: "{key}"\n  tls-service-pem: "{cert}"\n'
                        f'  http-endpoint: "{DOH_PATH}"\n  incoming-num-tcp: 100\n')
        common = UNBOUND_COMMON.format(d=d)
        if dnssec:
            common = common.replace('module-config: "iterator"',
                                    f'module-config: "validator iterator"\n  trust-anchor-file: "{anchor}"')
        text = f"""server:
{common}
  interface: 127.0.0.1@{port}
{listener}  do-not-query-localhost: no
  local-zone: "test." nodefault
  tls-cert-bundle: "{ca}"
  so-reuseport: no
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{UPSTREAM_DOT}#{TLS_NAME}
  forward-tls-upstream: yes
remote-control:
  control-enable: no
"""
        return (["unbound", "-d", "-c", conf], {conf: text}, d)
    if name == "stubby":
        conf = f"{d}/stubby.yml"
        appdir = f"{d}/stubby"
        os.makedirs(appdir, exist_ok=True)
        text = f"""resolution_type: GETDNS_RESOLUTION_STUB
dns_transport_list:
  - GETDNS_TRANSPORT_TLS
tls_authentication: GETDNS_AUTHENTICATION_REQUIRED
tls_query_padding_blocksize: 128
edns_client_subnet_private: 1
round_robin_upstreams: 0
idle_timeout: 10000
timeout: 2000
tls_ca_file: "{ca}"
appdata_dir: "{appdir}"
listen_addresses:
  - 127.0.0.1@{port}
upstream_recursive_servers:
  - address_data: 127.0.0.1
    tls_port: {UPSTREAM_DOT}
    tls_auth_name: "{TLS_NAME}"
"""
        return (["stubby", "-C", conf, "-v", "4"], {conf: text}, d)
    if name in ("dnsdist", "dnsdist+cache"):
        conf = f"{d}/{name.replace('+', '-')}.conf"
        cache = ""
        # A DoH backend (dnsdist 1.7, nghttp2): the same server's HTTP/2 endpoint.
        doh_path = f', dohPath="{DOH_PATH}"' if doh else ""
        if name == "dnsdist+cache":
            cache = ('pc = newPacketCache(100000, {maxTTL=86400, minTTL=0})\n'
                     'getPool(""):setCache(pc)\n')
        text = f"""setSecurityPollSuffix("")
setLocal("127.0.0.1:{port}")
setACL({{"127.0.0.0/8"}})
-- maxInFlight > 0 pipelines queries on the DoT backend; the default, 0, opens a
-- connection for every query in flight.
newServer({{address="127.0.0.1:{UPSTREAM_DOT}", tls="openssl", subjectName="{TLS_NAME}",
           caStore="{ca}", validateCertificates=true, checkName="bench.", maxInFlight=1000{doh_path}}})
{cache}"""
        if encrypted == "dot":
            text += f'addTLSLocal("127.0.0.1:{enc_port}", "{cert}", "{key}", {{provider="openssl"}})\n'
        elif encrypted == "doh":
            text += f'addDOHLocal("127.0.0.1:{enc_port}", "{cert}", "{key}", "{DOH_PATH}")\n'
        return (["dnsdist", "--supervised", "--disable-syslog", "-C", conf], {conf: text}, d)
    if name == "kresd":
        conf = f"{d}/kresd.conf"
        rundir = f"{d}/kresd"
        os.makedirs(rundir, exist_ok=True)
        listener = ""
        if encrypted:
            listener = (f"net.tls('{cert}', '{key}')\n"
                        f"net.listen('127.0.0.1', {enc_port}, {{ kind = '{'tls' if encrypted == 'dot' else 'doh2'}' }})\n")
        text = f"""net.ipv6 = false
net.listen('127.0.0.1', {port}, {{ kind = 'dns' }})
{listener}-- no DNSSEC validation (none of the forwarders validates) and no root priming
pcall(function() trust_anchors.remove('.') end)
pcall(function() modules.unload('priming') end)
pcall(function() modules.unload('detect_time_skew') end)
cache.size = 100 * MB
policy.add(policy.all(policy.TLS_FORWARD({{
  {{'127.0.0.1@{UPSTREAM_DOT}', hostname='{TLS_NAME}', ca_file='{ca}'}}
}})))
"""
        return (["kresd", "-n", "-c", conf, rundir], {conf: text}, rundir)
    raise ValueError(name)


def binary_of(name):
    return {"dns-proxy": BINARY, "unbound": "unbound", "stubby": "stubby", "dnsdist": "dnsdist",
            "dnsdist+cache": "dnsdist", "kresd": "kresd"}[name]


def version_cmd(name):
    return {"dns-proxy": [BINARY, "--version"], "unbound": ["unbound", "-V"],
            "stubby": ["stubby", "-V"], "dnsdist": ["dnsdist", "--version"],
            "dnsdist+cache": ["dnsdist", "--version"], "kresd": ["kresd", "--version"]}[name]



def installed(name):
    """Whether the program of forwarder `name` is there (dns-proxy: built)."""
    exe = binary_of(name)
    return os.path.exists(exe) if os.path.isabs(exe) else shutil.which(exe) is not None
