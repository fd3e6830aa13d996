"""What bench/run measures: the workloads, and the runner that starts the forwarders for them.
See bench/README.md ("The code, and adding a workload").

A `Workload` is one kind of table row: dnsperf for the duration with one file of names, over one
client transport. A `Setup` is one way of starting the forwarders, with the workloads run on
it: each forwarder is started afresh for each setup, is ready once it answers, and runs the
setup's workloads in order. `ROUNDS` lists the setups: a round runs forwarder by forwarder,
every setup of the round for one forwarder before the next. The light load (bench/openloop,
fresh starts per rate) and the dns-proxy cache fill are run by `Bench` after the rounds.
"""

import datetime
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from common import (ANSWER_IP, HERE, TLS_NAME, UPSTREAM_DOH, UPSTREAM_DOT, UPSTREAM_UDP, ConnSampler, Procs,
                    dns_query, log, make_certs, percentile, proc_cpu_ticks, proc_rss_kib, run,
                    summary_line, tail, tcp_passive_opens, udp_bound, udp_exchange, upstream_conf,
                    upstream_stats, version_of, write_names)
from links import LinkWorld
from peers import (DOH_PATH, ENCRYPTED_PORT, FWD_PORT, NODELAY_UDP, TRANSPORTS, UPSTREAM_KINDS,
                   VALIDATORS, WORLD_AUTH, WORLD_DIR, WORLD_DOT, WORLD_UDP, binary_of,
                   config_for, encrypted_unsupported, installed, nodelay_upstream_conf,
                   upstream_unsupported, version_cmd, world_upstream_conf)


@dataclass(frozen=True)
class Workload:
    """One kind of table row: dnsperf (-T 1 -t 2 -c --clients -q --outstanding -v) for --duration."""

    # The row's name in the table, the JSON and the chart.
    name: str
    # The names asked, which also set dnsperf's pace: "hot" (100 names, looped), "cold"
    # (unique names, -n 1), "paced" (unique names at --rate q/s, -n 1); in the DNSSEC test
    # world: "unsigned" (unique names of an unsigned zone, -n 1), "signed" (the names of a
    # signed zone, each once, -n 1), "signed-hot" (100 names of the signed zone, looped).
    names: str
    # How the clients reach the forwarder: None for plain DNS over UDP, "dot" or "doh" (dnsperf
    # -m) to the setup's listener.
    transport: Optional[str] = None


@dataclass(frozen=True)
class Setup:
    """One fresh start of each forwarder with one configuration, and the workloads run on it."""

    name: str
    workloads: tuple
    # Whether the command line asks for it.
    enabled: Callable
    # A client-facing listener ("dot" or "doh") beside the plain port, passed to
    # peers.config_for(encrypted=...); the workloads then go to it.
    listener: Optional[str] = None
    # More keywords for peers.config_for (a configuration variant).
    config: dict = field(default_factory=dict)
    # Why a forwarder cannot run this setup (a "not run" row), or None.
    unsupported: Callable = lambda name: None
    # Also run the workloads straight at the upstream's plain UDP port first ("ceiling" rows).
    ceiling: bool = False
    # dns-proxy: time from exec to READY=1, and RSS with its cache filled afterwards.
    startup: bool = False
    # Seconds of the run's time limit per forwarder start, beyond (duration + 25) per workload.
    slack_s: int = 30
    # Forwards to the DNSSEC test world's upstream (WORLD_DOT) instead of the bench. one.
    world: bool = False
    # Whether the forwarder validates DNSSEC (checked before measuring: AD on a signed name).
    validating: bool = False
    # dns-proxy with per-link DNS: the private system bus and the links of links.py, their
    # servers and domains pushed over it and checked before measuring.
    links: bool = False

    @property
    def label(self):
        return TRANSPORTS[self.listener] if self.listener else None


PLAIN = Setup("plain", (Workload("hot", "hot"), Workload("cold", "cold"), Workload("paced", "paced")),
              enabled=lambda a: not a.encrypted_only, ceiling=True, startup=True)

# The same hot and cold names with LINKS links of DOMAINS_PER_LINK domains each pushed over
# org.freedesktop.resolve1: every query is looked up among the links' zones, none matches, all
# go to the DoT upstream as in the plain rows (which run with link_dns = "off").
LINKS_SETUP = Setup("links", (Workload("links-hot", "hot"), Workload("links-cold", "cold")),
                    enabled=lambda a: not a.no_links and not a.encrypted_only,
                    config={"links": True}, links=True, slack_s=40,
                    unsupported=lambda name: None if name == "dns-proxy" else
                    "per-link DNS over org.freedesktop.resolve1 (systemd-resolved's API) is dns-proxy's own")


def listener_setup(transport):
    """The DoT-in or DoH-in workloads: the hot and cold names over `transport`."""
    def unsupported(name):
        why = encrypted_unsupported(name, transport)
        return f"no {TRANSPORTS[transport]} for clients: {why}" if why else None
    return Setup(transport, (Workload(f"{transport}-hot", "hot", transport),
                             Workload(f"{transport}-cold", "cold", transport)),
                 enabled=lambda a: not a.no_encrypted, listener=transport,
                 unsupported=unsupported, slack_s=40)


# The same hot and cold names forwarded to the same unbound over DNS over HTTPS instead of
# DNS over TLS: dns-proxy, and the peers that can forward over DoH (dnsdist's DoH backend).
DOH_UPSTREAM = Setup("doh-upstream", (Workload("doh-up-hot", "hot"), Workload("doh-up-cold", "cold")),
                     enabled=lambda a: not a.encrypted_only, config={"upstream": UPSTREAM_DOH},
                     unsupported=lambda name: upstream_unsupported(name, UPSTREAM_DOH))


def dnssec_setup(validating):
    """The DNSSEC workloads, validating or not: unique names under an unsigned zone and under a
    signed one, then names of the signed zone looped (cache hits). dns-proxy and unbound only."""
    mode = "on" if validating else "off"

    def unsupported(name):
        if name in VALIDATORS:
            return None
        return "the DNSSEC workloads compare " + " and ".join(VALIDATORS) + " only"
    return Setup(f"dnssec-{mode}", (Workload(f"unsigned-cold-{mode}", "unsigned"),
                                    Workload(f"signed-cold-{mode}", "signed"),
                                    Workload(f"signed-hot-{mode}", "signed-hot")),
                 enabled=lambda a: not a.no_dnssec and not a.encrypted_only,
                 config={"upstream": WORLD_DOT, "dnssec": validating}, unsupported=unsupported,
                 world=True, validating=validating,
                 # Signing the world and filling its upstream's cache, once per run.
                 slack_s=60)


DNSSEC_SETUPS = [dnssec_setup(False), dnssec_setup(True)]

ROUNDS = [
    # dns-proxy's links rows right after its plain ones, for a comparison in the same minutes.
    [PLAIN, LINKS_SETUP],
    [listener_setup(t) for t in TRANSPORTS],
    [DOH_UPSTREAM],
    DNSSEC_SETUPS,
]
SETUPS = [s for r in ROUNDS for s in r]
ALL_WORKLOADS = [w.name for s in SETUPS for w in s.workloads]
# Workloads whose clients use TLS (their connections are accepted in the namespace too).
ENCRYPTED_WORKLOADS = [w.name for s in SETUPS for w in s.workloads if w.transport]
DNSSEC_WORKLOADS = [w.name for s in DNSSEC_SETUPS for w in s.workloads]
LINKS_WORKLOADS = [w.name for w in LINKS_SETUP.workloads]
DOH_UPSTREAM_WORKLOADS = [w.name for w in DOH_UPSTREAM.workloads]
# Names files of unique names (dnsperf -n 1: each name asked once).
UNIQUE_NAMES = {"cold", "unsigned", "signed"}
# A name of the signed zone that every forwarder in the DNSSEC setups must answer (with AD when
# validating), and its address (tests/dnssec/world.sh: *.wild.test).
WORLD_PROBE = ("ready.wild.test", "192.0.2.20")


def signed_names(a):
    """How many names the signed zone of the DNSSEC workloads has (tests/dnssec/world.sh
    bulk.test, signed at each run: about 10 s of CPU per 50 000 names): enough for a validating
    forwarder at several thousand q/s for the duration. Running out ends a cold run early (a
    `*` row); its CPU per query is still valid."""
    return int(min(100_000, max(20_000, 6_000 * a.duration)))

LIGHT_RATES = [100, 500, 1000]
LIGHT_SOCKETS = 10
# dnsdist+cache forwards unique names exactly as dnsdist does: left out of the light workloads.
LIGHT_SKIP = {"dnsdist+cache"}
OPENLOOP = os.path.join(HERE, "openloop")
DIRECT = os.path.join(HERE, "direct")


def budget_s(a, n_fwd):
    """Seconds the rounds may take with `n_fwd` forwarders (the outer phase's time limit)."""
    total = 0
    for rnd in ROUNDS:
        total += int(sum((n_fwd + s.ceiling) * len(s.workloads) * (a.duration + 25) + n_fwd * s.slack_s
                         for s in rnd if s.enabled(a)))
    return total


# --------------------------------------------------------------------------------------------
# dnsperf


def transport_args(transport, port, doh_method):
    """dnsperf's arguments for a client-facing transport: none for plain UDP."""
    if transport == "dot":
        return ["-m", "dot"]
    if transport == "doh":
        return ["-m", "doh", "-O", f"doh-uri=https://127.0.0.1:{port}{DOH_PATH}",
                "-O", f"doh-method={doh_method}"]
    return []


def dnsperf(a, port, datafile, workload, out):
    """Run `workload` (a Workload) against 127.0.0.1:`port`; its parsed output."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", datafile,
           "-l", str(a.duration), "-c", str(a.clients), "-T", "1", "-t", "2", "-v"]
    cmd += transport_args(workload.transport, port, a.doh_method)
    outstanding = a.outstanding
    if workload.names == "paced":
        cmd += ["-Q", str(a.rate), "-q", str(max(outstanding, 100)), "-n", "1"]
    elif workload.names in UNIQUE_NAMES:
        cmd += ["-q", str(outstanding), "-n", "1"]
    else:
        cmd += ["-q", str(outstanding)]
    with open(out, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            p.wait(timeout=a.duration + 20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise RuntimeError("dnsperf did not finish in time")
    return parse_dnsperf(out)


def parse_dnsperf(path):
    res = {"sent": None, "completed": None, "lost": None, "qps": None, "mean_ms": None,
           "p50_ms": None, "p99_ms": None, "noerror": 0, "failed": 0, "runtime_s": None,
           "file_exhausted": False}
    lat = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("> "):
                parts = line.split()
                try:
                    lat.append(float(parts[-1]))
                except ValueError:
                    continue
                if parts[1] == "NOERROR":
                    res["noerror"] += 1
                else:
                    res["failed"] += 1
                continue
            summary_line(line.strip(), res)
    lat.sort()
    if lat:
        res["p50_ms"] = percentile(lat, 50) * 1000
        res["p99_ms"] = percentile(lat, 99) * 1000
    if res["completed"] is None:
        raise RuntimeError("dnsperf gave no statistics: " + tail(path, 4))
    return res


def ad_bit(name, port, timeout=2.0):
    """The AD bit of the answer to an A query for `name` with AD=1 (RFC 6840 5.7: the client
    understands it) and no EDNS, over UDP to 127.0.0.1:`port`; raises RuntimeError without one."""
    try:
        data = udp_exchange(name, port, timeout, flags=0x0120)  # RD, AD
    except OSError as e:
        raise RuntimeError(f"no answer to {name} with AD=1: {e}") from e
    return bool(data[3] & 0x20)


def light_fields(res):
    """The figures of one open-loop run kept in a light-load row."""
    out = {}
    for phase in ("first_second", "rest", "all"):
        ph = res[phase]
        out[phase] = {k: ph[k] for k in ("sent", "answered", "lost", "failed", "p50_ms", "p99_ms",
                                         "max_ms", "send_late_p99_ms")}
    return out



def not_up(what, error):
    """Why `what` is not measured (`error` stopped it coming up), logged."""
    why = f"{what} did not come up: {error}".replace("\n", " ")[:300]
    log(why)
    return why


# --------------------------------------------------------------------------------------------
# The runner (inner phase)


class Bench:
    def __init__(self, a):
        self.a = a
        self.d = a.workdir
        self.procs = Procs()
        self.rows = []
        self.light = []
        # The upstream's own light-load round trips over UDP, DoT and DoH (bench/direct).
        self.direct = None
        self.versions = {}
        # dns-proxy only: exec to READY=1, RSS with a full cache.
        self.extras = {}
        self.started = None
        # The links setup's bus, links and server (links.LinkWorld), while it runs.
        self.links = None

    def wait_ready(self, p, port, logfile, seconds=15, probe=("ready.bench", ANSWER_IP)):
        deadline = time.time() + seconds
        last = "no answer"
        name, answer = probe
        while time.time() < deadline:
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"exited with status {p.returncode}: {tail(logfile)}")
            try:
                rcode, addrs = dns_query(name, port, timeout=0.5)
                if rcode == 0 and answer in addrs:
                    return
                last = f"rcode {rcode}, answer {addrs}"
            except (OSError, IndexError, struct.error) as e:
                last = str(e) or type(e).__name__
            time.sleep(0.2)
        raise RuntimeError(f"no valid answer within {seconds} s ({last}): {tail(logfile)}")

    def start_upstream(self):
        conf = f"{self.d}/upstream.conf"
        with open(conf, "w") as f:
            f.write(upstream_conf(self.d))
        logf = f"{self.d}/upstream.log"
        self.upstream = self.procs.start("upstream", ["unbound", "-d", "-c", conf], logf)
        self.wait_ready(self.upstream, UPSTREAM_UDP, logf)
        # DoT side too, with the CA and the name (proves the certificate before any peer uses it)
        r = run(["openssl", "s_client", "-connect", f"127.0.0.1:{UPSTREAM_DOT}", "-servername",
                 TLS_NAME, "-verify_hostname", TLS_NAME, "-CAfile", f"{self.d}/ca.pem",
                 "-verify_return_error", "-brief"], input="", timeout=10, check=False)
        if "Verification: OK" not in r.stdout + r.stderr:
            raise RuntimeError("upstream DoT certificate check failed: " + (r.stdout + r.stderr)[-500:])

    def start_world(self, files):
        """The DNSSEC workloads' upstream (see peers.WORLD_DOT): the signed world built with
        tests/dnssec/world.sh, knotd serving it, an unbound that only iterates in front, its
        cache filled with every name of the workloads (so each forwarder, whichever runs
        first, finds the same warm upstream). None when it worked, else why not (logged)."""
        world = f"{self.d}/{WORLD_DIR}"
        script = os.path.join(os.path.dirname(HERE), "tests", "dnssec", "world.sh")
        try:
            log(f"signing the DNSSEC test world ({signed_names(self.a)} names in bulk.test)")
            run([script, "build", world, str(signed_names(self.a))], timeout=600)
            knot_run = f"{self.d}/knot"
            os.makedirs(knot_run, exist_ok=True)
            conf = run([script, "knot-conf", world, f"127.0.0.1@{WORLD_AUTH}", knot_run],
                       timeout=30).stdout
            with open(f"{self.d}/knot.conf", "w") as f:
                f.write(conf)
            logf = f"{self.d}/knotd.log"
            knot = self.procs.start("knotd", ["knotd", "-c", f"{self.d}/knot.conf"], logf)
            self.wait_ready(knot, WORLD_AUTH, logf, probe=WORLD_PROBE)
            with open(f"{self.d}/world-upstream.conf", "w") as f:
                f.write(world_upstream_conf(self.d))
            logf = f"{self.d}/world-upstream.log"
            up = self.procs.start("world-upstream",
                                  ["unbound", "-d", "-c", f"{self.d}/world-upstream.conf"], logf)
            self.wait_ready(up, WORLD_UDP, logf, probe=WORLD_PROBE)
            for names in ("unsigned", "signed"):
                log(f"filling the DNSSEC upstream's cache with the {names} names")
                run(["dnsperf", "-s", "127.0.0.1", "-p", str(WORLD_UDP), "-d", files[names],
                     "-n", "1", "-l", "300", "-c", str(self.a.clients), "-q",
                     str(self.a.outstanding), "-t", "2"], timeout=330)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            return not_up("the DNSSEC test world", e)
        self.versions["DNSSEC world knotd"] = version_of(["knotd", "--version"])
        return None

    def start_links(self):
        """The bus, the links and their server of the links setup (links.py); None when they
        came up, else why not (logged)."""
        self.links = LinkWorld(self.procs, self.d)
        try:
            self.links.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            return not_up("the per-link DNS scenario", e)
        self.versions["links: dbus-daemon"] = version_of(["dbus-daemon", "--version"])
        return None

    def start_nodelay_upstream(self):
        """The second upstream kind (see NODELAY_DOT); None, with the reason logged, if dnsdist
        is missing or does not come up."""
        if not shutil.which("dnsdist"):
            log("dnsdist not installed: no TCP_NODELAY upstream for the light workloads")
            return None
        conf = f"{self.d}/nodelay-upstream.conf"
        with open(conf, "w") as f:
            f.write(nodelay_upstream_conf(self.d))
        logf = f"{self.d}/nodelay-upstream.log"
        p = self.procs.start("nodelay-upstream", ["dnsdist", "--supervised", "--disable-syslog",
                                                  "-C", conf], logf)
        try:
            self.wait_ready(p, NODELAY_UDP, logf)
        except RuntimeError as e:
            log(f"TCP_NODELAY upstream (dnsdist) did not come up: {e}")
            self.procs.stop(p)
            return None
        self.versions["nodelay upstream dnsdist"] = version_of(["dnsdist", "--version"])
        return p

    def openloop(self, port, rate):
        cmd = [sys.executable, OPENLOOP, "--port", str(port), "--rate", str(rate),
               "--duration", str(self.a.light_duration), "--sockets", str(LIGHT_SOCKETS),
               "--timeout", "2"]
        r = run(cmd, timeout=self.a.light_duration + 30)
        return json.loads(r.stdout)

    def first_query(self, port, p, logfile):
        """ms from sending the first query after the forwarder bound its port to the answer.
        Bound, not answering: no query has gone through it yet. A query that gets no answer
        within 2 s is sent again (the time counts from the first)."""
        deadline = time.time() + 15
        while not udp_bound(port):
            if p.poll() is not None:
                raise RuntimeError(f"exited with status {p.returncode}: {tail(logfile)}")
            if time.time() > deadline:
                raise RuntimeError(f"did not bind UDP port {port} within 15 s: {tail(logfile)}")
            time.sleep(0.02)
        name = "first-%08x.bench" % random.getrandbits(32)
        started = time.monotonic()
        for _ in range(3):
            try:
                rcode, addrs = dns_query(name, port, timeout=2.0)
                if rcode == 0 and ANSWER_IP in addrs:
                    return (time.monotonic() - started) * 1000
            except (OSError, IndexError, struct.error):
                pass
        raise RuntimeError("no answer to the first query within 6 s")

    def run_light_ceiling(self, kinds):
        """Each upstream's plain-UDP port at every rate, in as many runs as a forwarder gets
        fresh starts: the limit comes from their median, since one run at a light rate can be
        off by a factor of two either way on a small machine. Kinds on the same port (unbound's
        DoT and DoH) share its runs."""
        by_port = {}
        for kind, (_dot, udp) in kinds.items():
            by_port.setdefault(udp, []).append(kind)
        rows = {kind: [] for kind in kinds}
        for udp, names in by_port.items():
            for rate in LIGHT_RATES:
                for start in range(self.a.light_starts):
                    log(f"ceiling (open loop -> {', '.join(names)} plain UDP) / {rate} q/s, "
                        f"run {start + 1}")
                    res = self.openloop(udp, rate)
                    for kind in names:
                        rows[kind].append({"forwarder": "ceiling", "upstream": kind, "rate": rate,
                                           "start": start, "first_query_ms": None,
                                           **light_fields(res)})
        for kind in kinds:
            self.light.extend(rows[kind])

    def run_direct(self):
        """unbound's own round trips at the lowest light rate over plain UDP, DoT and DoH, with
        no forwarder between: what its DoH costs over its DoT is the upstream's share of a
        forwarder's DoH-over-DoT difference."""
        rate = LIGHT_RATES[0]
        log(f"upstream alone (bench/direct -> unbound UDP, DoT, DoH) / {rate} q/s")
        cmd = [sys.executable, DIRECT, "--ca", f"{self.d}/ca.pem", "--name", TLS_NAME,
               "--udp", str(UPSTREAM_UDP), "--dot", str(UPSTREAM_DOT), "--doh", str(UPSTREAM_DOH),
               "--path", DOH_PATH, "--rate", str(rate), "--duration", str(self.a.light_duration),
               "--rounds", str(self.a.light_starts)]
        try:
            r = run(cmd, timeout=3 * self.a.light_duration * self.a.light_starts + 60)
            self.direct = json.loads(r.stdout)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
            self.direct = {"skipped": str(e).replace("\n", " ")[:300]}
            log(f"bench/direct failed: {self.direct['skipped']}")

    def run_light(self, name, kinds):
        """Open-loop light load, each (upstream kind, rate) over fresh starts of the forwarder:
        the first query after start, then `light_duration` s at the rate."""
        if not installed(name):
            return
        port = FWD_PORT[name]
        for kind, (dot, _udp) in kinds.items():
            if upstream_unsupported(name, dot):
                continue
            cmd, conf_files, cwd = config_for(name, self.d, port, dot)
            for path, text in conf_files.items():
                with open(path, "w") as f:
                    f.write(text)
            logf = f"{self.d}/{name.replace('+', '-')}-light.log"
            for rate in LIGHT_RATES:
                for start in range(self.a.light_starts):
                    log(f"{name} / light {rate} q/s via {kind}, fresh start {start + 1}")
                    p = self.procs.start(name, cmd, logf, cwd=cwd)
                    row = {"forwarder": name, "upstream": kind, "rate": rate, "start": start}
                    try:
                        row["first_query_ms"] = self.first_query(port, p, logf)
                        cpu0 = proc_cpu_ticks(p.pid)
                        res = self.openloop(port, rate)
                        cpu1 = proc_cpu_ticks(p.pid)
                        row.update(light_fields(res))
                        if res["all"]["answered"]:
                            row["cpu_us_per_query"] = ((cpu1 - cpu0) / os.sysconf("SC_CLK_TCK")
                                                       * 1e6 / res["all"]["answered"])
                    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
                        row["skipped"] = str(e).replace("\n", " ")[:300]
                        log(f"{name}: light {rate} q/s via {kind} failed: {row['skipped']}")
                    finally:
                        self.procs.stop(p)
                    self.light.append(row)

    def measure(self, forwarder, workload, port, datafile, pid, upstream=UPSTREAM_DOT, world=False):
        """One row: `workload` (a Workload) against `port`, with the CPU and RSS of `pid`;
        the connections and queries counted are those to the upstream's port `upstream`, or
        to the DNSSEC world's upstream if `world`."""
        ticks = os.sysconf("SC_CLK_TCK")
        up_conf = "world-upstream.conf" if world else "upstream.conf"
        st0 = upstream_stats(self.d, up_conf)
        opens0 = tcp_passive_opens()
        cpu0 = proc_cpu_ticks(pid) if pid else None
        sampler = ConnSampler(WORLD_DOT if world else upstream)
        stat = "num.query.https" if upstream == UPSTREAM_DOH else "num.query.tls"
        sampler.start()
        out = f"{self.d}/dnsperf-{forwarder}-{workload.name}.txt"
        try:
            res = dnsperf(self.a, port, datafile, workload, out)
        finally:
            peak = sampler.stop()
        cpu1 = proc_cpu_ticks(pid) if pid else None
        opens1 = tcp_passive_opens()
        st1 = upstream_stats(self.d, up_conf)
        try:
            os.remove(out)
        except OSError:
            pass
        # Client connections are accepted in the namespace too when the clients use TLS: the
        # kernel's count then says nothing about the upstream (the peak, from ss, still does).
        row = {"forwarder": forwarder, "workload": workload.name, **res,
               "tls_connections_opened": None if workload.transport else opens1 - opens0,
               "tls_connections_peak": peak,
               "upstream_tls_queries": int(st1.get(stat, 0) - st0.get(stat, 0)),
               "upstream_tls_resumed": int(st1.get("num.query.tls.resume", 0) - st0.get("num.query.tls.resume", 0)),
               "cpu_us_per_query": None, "rss_after_kib": None}
        if pid and res["completed"]:
            row["cpu_us_per_query"] = (cpu1 - cpu0) / ticks * 1e6 / res["completed"]
            row["cpu_s"] = (cpu1 - cpu0) / ticks
            row["rss_after_kib"] = proc_rss_kib(pid)
        if forwarder == "ceiling":
            row["tls_connections_opened"] = row["tls_connections_peak"] = None
            row["upstream_tls_queries"] = row["upstream_tls_resumed"] = None
            row["cpu_us_per_query"] = (cpu1 - cpu0) / ticks * 1e6 / max(1, res["completed"])
            row["cpu_s"] = (cpu1 - cpu0) / ticks
            row["rss_after_kib"] = proc_rss_kib(pid)
        return row

    def files(self, ceiling_qps):
        a = self.a
        hot = f"{self.d}/hot.txt"
        with open(hot, "w") as f:
            for i in range(100):
                f.write(f"h{i}.bench A\n")
        # Enough unique names that the fastest forwarder cannot run out: nothing forwards
        # faster than the upstream answers plain UDP alone (the ceiling), plus a margin.
        n_cold = int(max(ceiling_qps, 20000) * a.duration * 1.5) + 1000
        write_names(f"{self.d}/cold.txt", "c", n_cold)
        n_paced = int(a.rate * a.duration * 1.2) + 1000
        write_names(f"{self.d}/paced.txt", "p", n_paced)
        files = {"hot": hot, "cold": f"{self.d}/cold.txt", "paced": f"{self.d}/paced.txt",
                 "ceiling": hot}
        if any(s.enabled(a) for s in DNSSEC_SETUPS):
            # The world's unsigned wildcard *.any.insecure.test, and bulk.test's signed names.
            write_names(f"{self.d}/unsigned.txt", "u", 2 * signed_names(a), zone="any.insecure.test")
            with open(f"{self.d}/signed.txt", "w") as f:
                f.write("".join(f"n{i:x}.bulk.test A\n" for i in range(signed_names(a))))
            with open(f"{self.d}/signed-hot.txt", "w") as f:
                f.write("".join(f"n{i:x}.bulk.test A\n" for i in range(100)))
            files.update({k: f"{self.d}/{k}.txt" for k in ("unsigned", "signed", "signed-hot")})
        return files

    def run_ceiling(self, setup, files):
        for w in setup.workloads:
            log(f"ceiling (dnsperf -> upstream plain UDP) / {w.name}")
            row = self.measure("ceiling", w, UPSTREAM_UDP, files[w.names], self.upstream.pid)
            row["note"] = "upstream unbound over plain UDP, no forwarder (cpu/rss: the upstream)"
            row["rss_idle_kib"] = None
            self.rows.append(row)
            time.sleep(0.5)

    def run_setup(self, name, setup, files):
        """The workloads of `setup` on a fresh start of forwarder `name`."""
        workloads = [w.name for w in setup.workloads]
        exe = binary_of(name)
        if not installed(name):
            self.skip(name, f"{exe} not installed" if name != "dns-proxy" else f"{exe} not built",
                      workloads)
            return
        why = setup.unsupported(name)
        if why:
            self.skip(name, why, workloads)
            return
        self.versions[name] = version_of(version_cmd(name))
        port = FWD_PORT[name]
        client_port = ENCRYPTED_PORT[setup.listener][name] if setup.listener else port
        cmd, conf_files, cwd = config_for(name, self.d, port, encrypted=setup.listener,
                                          **setup.config)
        for path, text in conf_files.items():
            with open(path, "w") as f:
                f.write(text)
        suffix = "" if setup is PLAIN else f"-{setup.name}"
        logf = f"{self.d}/{name.replace('+', '-')}{suffix}.log"
        if setup.label:
            log(f"{name}: starting with {setup.label} on 127.0.0.1:{client_port}")
        else:
            log(f"{name}: starting on 127.0.0.1:{port}")
        notify = None
        env = {"DBUS_SYSTEM_BUS_ADDRESS": self.links.address} if setup.links else None
        if setup.startup and name == "dns-proxy":
            # Exec to READY=1, as systemd sees it: a notify socket like the one it passes.
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(f"{self.d}/notify.sock")
            notify.settimeout(5.0)
            env = {**(env or {}), "NOTIFY_SOCKET": f"{self.d}/notify.sock"}
        started = time.monotonic()
        p = self.procs.start(name, cmd, logf, cwd=cwd, env=env)
        if notify is not None:
            try:
                while b"READY=1" not in notify.recv(4096):
                    pass
                self.extras["startup_ms"] = (time.monotonic() - started) * 1000
            except OSError as e:
                log(f"{name}: no READY=1 ({e})")
            finally:
                notify.close()
        try:
            try:
                self.wait_ready(p, port, logf, probe=WORLD_PROBE if setup.world else ("ready.bench", ANSWER_IP))
                if setup.listener:
                    self.wait_encrypted(p, client_port, setup.listener, logf)
                if setup.world:
                    ad = ad_bit(WORLD_PROBE[0], port)
                    if ad != setup.validating:
                        raise RuntimeError(f"AD={int(ad)} on {WORLD_PROBE[0]} (validating: "
                                           f"{setup.validating}): {tail(logf)}")
                if setup.links:
                    self.links.push()
                    self.links.verify(port)
            except RuntimeError as e:
                self.skip(name, f"{setup.label} did not come up: {e}" if setup.label
                          else f"did not come up: {e}", workloads)
                return
            time.sleep(0.5)
            rss_idle = proc_rss_kib(p.pid)
            for w in setup.workloads:
                if p.poll() is not None:
                    self.skip(name, f"exited with status {p.returncode} before {w.name}: {tail(logf)}",
                              [w.name])
                    continue
                log(f"{name} / {w.name}")
                try:
                    row = self.measure(name, w, client_port, files[w.names], p.pid,
                                       setup.config.get("upstream", UPSTREAM_DOT), world=setup.world)
                except (RuntimeError, OSError) as e:
                    self.skip(name, f"{w.name} failed: {e}", [w.name])
                    continue
                row["rss_idle_kib"] = rss_idle
                self.rows.append(row)
                time.sleep(1.0)  # let queries still in flight drain
            if setup.startup and name == "dns-proxy" and p.poll() is None:
                self.fill_cache(port, p.pid, rss_idle)
        finally:
            self.procs.stop(p)

    def wait_encrypted(self, p, port, transport, logfile, seconds=15):
        """Until dnsperf itself gets an answer over `transport` on `port` (DoH is HTTP/2, which
        only dnsperf speaks here); raises RuntimeError with the reason."""
        probe = f"{self.d}/ready.txt"
        with open(probe, "w") as f:
            f.write("ready.bench A\n")
        deadline = time.time() + seconds
        last = "no answer"
        while time.time() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"exited with status {p.returncode}: {tail(logfile)}")
            cmd = (["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", probe, "-n", "1",
                    "-l", "3", "-t", "2", "-c", "1"]
                   + transport_args(transport, port, self.a.doh_method))
            r = run(cmd, timeout=15, check=False)
            out = r.stdout + r.stderr
            completed = [line.split()[2] for line in out.splitlines()
                         if line.strip().startswith("Queries completed:")]
            if completed and completed[0] == "1":
                return
            last = " | ".join(line.strip() for line in out.splitlines() if "Warning" in line
                              or "Error" in line or "error" in line)[:300] or "no answer"
            time.sleep(0.5)
        raise RuntimeError(f"no {TRANSPORTS[transport]} answer within {seconds} s ({last}): "
                           f"{tail(logfile)}")

    def fill_cache(self, port, pid, rss_idle):
        """RSS once the default 32 MiB cache is full: unique names until it must evict."""
        fill = f"{self.d}/fill.txt"
        count = 400_000  # about 3x what 32 MiB holds at ~250 bytes an entry
        write_names(fill, "f", count)
        log(f"dns-proxy: filling the cache with {count} unique names")
        cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", fill, "-n", "1",
               "-l", "120", "-c", str(self.a.clients), "-q", str(self.a.outstanding), "-t", "2"]
        subprocess.run(cmd, capture_output=True, timeout=180, check=False)
        time.sleep(1.0)
        self.extras["rss_idle_kib"] = rss_idle
        self.extras["rss_full_cache_kib"] = proc_rss_kib(pid)
        self.extras["cache_bound_kib"] = 32 * 1024

    def skip(self, name, why, workloads):
        why = why.replace("\n", " ")[:400]
        log(f"{name}: not measured: {why}")
        for w in workloads:
            self.rows.append({"forwarder": name, "workload": w, "skipped": why})

    def main(self):
        """Every workload the command line asks for; the rows, versions and extras are then
        in self, for report.report."""
        a = self.a
        self.started = datetime.datetime.now().astimezone()
        run(["ip", "link", "set", "lo", "up"], timeout=10)
        make_certs(self.d)
        self.versions["upstream unbound"] = version_of(["unbound", "-V"])
        self.versions["dnsperf"] = version_of(["dnsperf", "-h"])
        self.start_upstream()
        # A short calibration of the ceiling, to size the unique-name files.
        hot = f"{self.d}/hot.txt"
        with open(hot, "w") as f:
            f.write("".join(f"h{i}.bench A\n" for i in range(100)))
        cal = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(UPSTREAM_UDP), "-d", hot,
                              "-l", "1", "-c", str(a.clients), "-q", str(a.outstanding)],
                             capture_output=True, text=True, timeout=30)
        cal_qps = 50000.0
        for line in cal.stdout.splitlines():
            if "Queries per second:" in line:
                cal_qps = float(line.split()[3])
        files = self.files(cal_qps)
        world_down = links_down = None
        for rnd in ROUNDS:
            setups = [s for s in rnd if s.enabled(a)]
            if any(s.world for s in setups):
                world_down = self.start_world(files)
            if any(s.links for s in setups) and "dns-proxy" in a.only:
                links_down = self.start_links()
            try:
                for setup in setups:
                    down = world_down if setup.world else links_down if setup.links else None
                    for name in a.only if down else []:
                        self.skip(name, setup.unsupported(name) or down,
                                  [w.name for w in setup.workloads])
                setups = [s for s in setups if not (s.world and world_down)
                          and not (s.links and links_down)]
                for setup in setups:
                    if setup.ceiling:
                        self.run_ceiling(setup, files)
                for name in a.only:
                    for setup in setups:
                        self.run_setup(name, setup, files)
            finally:
                if self.links is not None:
                    self.links.stop()
        if not a.no_light:
            kinds = {"unbound": UPSTREAM_KINDS["unbound"]}
            if not a.encrypted_only:
                kinds["unbound-doh"] = UPSTREAM_KINDS["unbound-doh"]
            if self.start_nodelay_upstream() is not None:
                kinds["dnsdist"] = UPSTREAM_KINDS["dnsdist"]
            self.run_light_ceiling(kinds)
            if "unbound-doh" in kinds:
                self.run_direct()
            for name in a.only:
                if name not in LIGHT_SKIP:
                    self.run_light(name, kinds)
        self.procs.stop_all()


