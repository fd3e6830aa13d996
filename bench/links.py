"""The per-link DNS scenario of bench/run (the `links-*` rows). See bench/README.md.

dns-proxy learns per-link DNS servers and domains over org.freedesktop.resolve1, as
NetworkManager and resolvectl push them. Here, in the bench's private network namespace:

- a private system bus: `dbus-daemon` with `<type>system</type>` on a socket in the work dir,
  letting anyone own names and call anyone (dns-proxy itself decides who may change links:
  root may), handed to dns-proxy as DBUS_SYSTEM_BUS_ADDRESS;
- LINKS interfaces (veth pairs, both ends in the namespace, up), link i with the address
  10.53.i.1/24: dns-proxy takes settings only for interfaces that exist;
- their DNS server: one unbound on 10.53.i.1:53 for every i, answering every name under the
  links' domains with LINK_ANSWER and refusing the rest (the bench upstream refuses those
  names, so an answer proves the name went to a link server);
- once dns-proxy owns the bus name, `busctl call` SetLinkDNS (10.53.i.1) and SetLinkDomains
  (DOMAINS_PER_LINK search domains) for each link, as root, the way NetworkManager does.

Before measuring, `dns-proxy status --json` must list every link with its domains, and a name
under each link's domains must be answered by the link server. The workloads' names are all
under `bench.`, outside every link domain: each query is looked up in the routing table of
LINKS x DOMAINS_PER_LINK zones and goes on to the DoT upstream as in the plain rows.
Everything is removed by `stop` (and with the namespace, whatever happens).
"""

import json
import shutil
import struct
import subprocess
import time

from common import BINARY, UNBOUND_COMMON, dns_query, log, run, tail

LINKS = 20
DOMAINS_PER_LINK = 5
# What the links' server answers for every name under the links' domains.
LINK_ANSWER = "192.0.2.53"
NAME = "org.freedesktop.resolve1"
TOOLS = ["dbus-daemon", "busctl", "ip"]


def interface(i):
    return f"bl{i}"


def server_address(i):
    return f"10.53.{i}.1"


def domains(i):
    return [f"d{j}.link{i}.example" for j in range(DOMAINS_PER_LINK)]


def control_socket(d):
    """dns-proxy's control socket in the links setup (`dns-proxy status`)."""
    return f"{d}/dns-proxy-links.control"


def missing_tool():
    """Why the scenario cannot run here (a tool missing), or None."""
    for tool in TOOLS:
        if not shutil.which(tool):
            return f"{tool} is not installed (the per-link DNS scenario needs {', '.join(TOOLS)})"
    return None


def bus_conf(socket_path):
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket_path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def link_server_conf(d):
    """unbound on 10.53.i.1:53 for every link: LINK_ANSWER under the links' domains, the rest
    refused."""
    lines = ["server:", UNBOUND_COMMON.format(d=d).rstrip("\n")]
    lines += [f"  interface: {server_address(i)}@53" for i in range(LINKS)]
    # Queries to a link's address come from that address.
    lines += ["  access-control: 10.53.0.0/16 allow", "  so-reuseport: no", '  local-zone: "." refuse']
    for i in range(LINKS):
        for zone in domains(i):
            lines += [f'  local-zone: "{zone}." redirect', f'  local-data: "{zone}. 60 IN A {LINK_ANSWER}"']
    lines += ["remote-control:", "  control-enable: no"]
    return "\n".join(lines) + "\n"


class LinkWorld:
    """The bus, the links and their server; `start`, then `push` and `verify` for each fresh
    dns-proxy, `stop` at the end."""

    def __init__(self, procs, d):
        self.procs, self.d = procs, d
        self.socket = f"{d}/system_bus_socket"
        self.address = f"unix:path={self.socket}"
        self.started = []
        self.made = []

    def start(self):
        """Raises RuntimeError (or OSError, SubprocessError) with the reason if a part does not
        come up, with what did come up removed again."""
        try:
            self.bring_up()
        except subprocess.CalledProcessError as e:
            self.stop()
            raise RuntimeError(f"{' '.join(e.cmd)}: {(e.stderr or '').strip()}") from e
        except BaseException:
            self.stop()
            raise

    def bring_up(self):
        why = missing_tool()
        if why:
            raise RuntimeError(why)
        with open(f"{self.d}/bus.conf", "w") as f:
            f.write(bus_conf(self.socket))
        logf = f"{self.d}/dbus-daemon.log"
        bus = self.procs.start("dbus-daemon", ["dbus-daemon", f"--config-file={self.d}/bus.conf",
                                               "--nofork", "--nopidfile"], logf)
        self.started.append(bus)
        deadline = time.time() + 10
        while self.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus", "GetId", check=False).returncode != 0:
            if bus.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the private system bus did not come up: {tail(logf)}")
            time.sleep(0.1)
        for i in range(0, LINKS, 2):
            run(["ip", "link", "add", interface(i), "type", "veth", "peer", "name",
                 interface(i + 1)], timeout=10)
            self.made.append(interface(i))
        for i in range(LINKS):
            run(["ip", "addr", "add", f"{server_address(i)}/24", "dev", interface(i)], timeout=10)
            run(["ip", "link", "set", interface(i), "up"], timeout=10)
        with open(f"{self.d}/link-server.conf", "w") as f:
            f.write(link_server_conf(self.d))
        logf = f"{self.d}/link-server.log"
        server = self.procs.start("link-server", ["unbound", "-d", "-c", f"{self.d}/link-server.conf"],
                                  logf)
        self.started.append(server)
        deadline = time.time() + 15
        while True:
            try:
                rcode, addrs = dns_query(f"ready.{domains(LINKS - 1)[0]}", 53, timeout=0.5,
                                         host=server_address(LINKS - 1))
                if rcode == 0 and LINK_ANSWER in addrs:
                    break
            except (OSError, IndexError, struct.error):
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the links' DNS server did not come up: {tail(logf)}")
            time.sleep(0.2)

    def busctl(self, *args, check=True):
        return run(["busctl", f"--address={self.address}", *args], timeout=20, check=check)

    def push(self, seconds=15):
        """Once dns-proxy owns the bus name, each link's server and domains, as root; raises
        RuntimeError if a call fails or all take more than 2 x `seconds`."""
        try:
            self.push_calls(seconds)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"busctl {' '.join(e.cmd[2:])} failed: {e.stderr.strip()}") from e
        except subprocess.SubprocessError as e:
            raise RuntimeError(f"busctl: {e}") from e

    def push_calls(self, seconds):
        deadline = time.time() + seconds
        while "true" not in self.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "NameHasOwner", "s", NAME).stdout:
            if time.time() > deadline:
                raise RuntimeError(f"nobody owns {NAME} on the private bus after {seconds} s")
            time.sleep(0.1)
        manager = [NAME, "/org/freedesktop/resolve1", "org.freedesktop.resolve1.Manager"]
        deadline = time.time() + seconds
        for i in range(LINKS):
            if time.time() > deadline:
                raise RuntimeError(f"setting {LINKS} links took more than {seconds} s")
            index = ifindex(interface(i))
            self.busctl("call", *manager, "SetLinkDNS", "ia(iay)", index, "1", "2", "4",
                        *server_address(i).split("."))
            names = domains(i)
            self.busctl("call", *manager, "SetLinkDomains", "ia(sb)", index, str(len(names)),
                        *[x for name in names for x in (name, "false")])

    def verify(self, port, seconds=10):
        """That dns-proxy on 127.0.0.1:`port` lists every link with its domains and sends a
        name under each link's domains to the link server; raises RuntimeError if not."""
        deadline = time.time() + seconds
        while True:
            try:
                r = run([BINARY, "status", "--json", "--control", control_socket(self.d)],
                        timeout=10, check=False)
                status = json.loads(r.stdout)
            except (ValueError, subprocess.SubprocessError) as e:
                r, status = subprocess.CompletedProcess([], 1, "", str(e)), {}
            links = {link.get("name"): link for link in status.get("links", [])}
            missing = [interface(i) for i in range(LINKS)
                       if set(domains(i)) - set(links.get(interface(i), {}).get("domains", []))]
            if not missing:
                break
            if time.time() > deadline:
                raise RuntimeError(f"dns-proxy status lists {len(links)} links, not all {LINKS} "
                                   f"with their domains (missing: {', '.join(missing)}) "
                                   f"{(r.stderr or r.stdout).strip()[-300:]}")
            time.sleep(0.2)
        for i in range(LINKS):
            name = f"verify.{domains(i)[-1]}"
            try:
                rcode, addrs = dns_query(name, port, timeout=2.0)
            except (OSError, IndexError, struct.error) as e:
                raise RuntimeError(f"no answer to {name}: {e}") from e
            if rcode != 0 or LINK_ANSWER not in addrs:
                raise RuntimeError(f"{name} not answered by the link server (rcode {rcode}, {addrs})")
        log(f"dns-proxy: {LINKS} links with {DOMAINS_PER_LINK} domains each registered and routed")

    def stop(self):
        for p in reversed(self.started):
            self.procs.stop(p)
        self.started = []
        for name in self.made:
            run(["ip", "link", "del", name], timeout=10, check=False)
        self.made = []


def ifindex(name):
    """The interface index of `name` in this network namespace (`ip -o link show`: "N: name...")."""
    out = run(["ip", "-o", "link", "show", name], timeout=10).stdout
    return out.split(":", 1)[0].strip()
