"""Shared by bench/run, bench/soak and bench/abuse. See bench/README.md.

What every script needs: paths, commands with a time limit, the daemons it starts, /proc
readings, a DNS query over UDP, the machine's description, installation and build, the bench CA
and certificates, and the DoT upstream (unbound) every forwarder forwards to.

What bench/soak and bench/abuse add (bench/run has its own, see bench/run, peers.py and
workloads.py): the outer phase (root, packages, build, private namespaces with a time limit),
the inner wrapper (PID 1, signals, cleanup), an upstream that can be killed and restarted, and
dns-proxy started with a config file, a notify socket (READY=1) and its metrics endpoint, from
which the daemon's own counters are read while it runs.
"""

import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
# Where `cargo build --release` (run in REPO) puts it: CARGO_TARGET_DIR if set, else target/.
BINARY = os.path.join(REPO, os.environ.get("CARGO_TARGET_DIR") or "target", "release", "dns-proxy")

# Fixed ports are fine: the inner phase has a network namespace of its own.
UPSTREAM_DOT = 8853
# The same unbound serving DNS over HTTPS (HTTP/2), for the DoH-upstream workloads.
UPSTREAM_DOH = 8443
UPSTREAM_UDP = 8053
# The name on the forwarders' own certificate (dnsperf does not validate it).
LISTENER_NAME = "proxy.bench"
TLS_NAME = "upstream.bench"
ANSWER_IP = "192.0.2.1"

PROXY_PORT = 5301
PROG = os.path.basename(sys.argv[0])
# The name in front of every log line; bench/run's is "bench".
LOG_NAME = "bench" if PROG == "run" else PROG


def log(msg):
    print(f"[{LOG_NAME} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, timeout=60, check=True, **kw):
    return subprocess.run(cmd, timeout=timeout, check=check, text=True,
                          capture_output=True, **kw)

# --------------------------------------------------------------------------------------------
# Installation and build (outer phase, in the host's namespaces)


def dpkg_installed(pkg):
    r = run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
    return r.returncode == 0 and "install ok installed" in r.stdout


def stop_services(services):
    """Make sure the packages' own daemons do not run as system services."""
    systemd = os.path.isdir("/run/systemd/system")
    for svc in services:
        if systemd:
            run(["systemctl", "disable", "--now", svc], check=False)
        else:
            script = "/etc/init.d/" + svc
            if os.path.exists(script):
                st = run([script, "status"], check=False)
                if st.returncode == 0:
                    log(f"stopping system service {svc}")
                    run([script, "stop"], check=False)
                run(["update-rc.d", svc, "disable"], check=False)
    # Report (never kill: other users of this machine may run these programs themselves)
    # any of them still running from the packages' default configuration.
    for name in ["unbound", "stubby", "dnsdist", "kresd"]:
        r = run(["pgrep", "-a", "-x", name], check=False)
        for line in r.stdout.splitlines():
            args = line.split()[2:]
            if not args or any(x.startswith("/etc/") for x in args):
                log(f"warning: {name} still runs with its system configuration: {line}")


def install(packages, services, no_chart):
    """apt-get install the `packages` missing (their `services` not started), and matplotlib
    for the chart unless `no_chart`."""
    missing = [p for p in packages if not dpkg_installed(p)]
    if missing:
        policy = "/usr/sbin/policy-rc.d"
        created = False
        if not os.path.exists(policy):
            with open(policy, "w") as f:
                f.write("#!/bin/sh\n# temporary, from dns-proxy bench/run: start no service\nexit 101\n")
            os.chmod(policy, 0o755)
            created = True
        try:
            log("apt-get install " + " ".join(missing))
            cmd = ["apt-get", "install", "-y", "--no-install-recommends",
                   "-o", "DPkg::Lock::Timeout=300"] + missing
            envi = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = run(cmd, timeout=900, check=False, env=envi)
            if r.returncode != 0:
                log("apt-get install failed; apt-get update and retry")
                run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=300"], timeout=600,
                    check=False)
                r = run(cmd, timeout=900, check=False, env=envi)
                if r.returncode != 0:
                    log("apt-get install failed (the missing peers will be reported):\n"
                        + r.stdout[-2000:] + r.stderr[-2000:])
        finally:
            if created:
                os.remove(policy)
            stop_services(services)
    if not no_chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log("pip install matplotlib")
            r = run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], timeout=600,
                    check=False)
            if r.returncode != 0:
                log("pip install matplotlib failed; no chart:\n" + r.stderr[-1500:])


def build():
    log("cargo build --release")
    r = subprocess.run(["cargo", "build", "--release"], cwd=REPO, timeout=1800)
    if r.returncode != 0:
        log("cargo build --release failed; dns-proxy will be reported as not runnable")


# --------------------------------------------------------------------------------------------
# Processes, /proc and a DNS query (inner phase)


def query_packet(qid, name, flags=0x0100):
    """An A query for `name` with id `qid` and header `flags` (RD), no EDNS."""
    q = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def udp_exchange(name, port, timeout=1.0, flags=0x0100, host="127.0.0.1"):
    """One A query for `name` with header `flags` (RD; no EDNS) over UDP to `host`:`port`;
    the answer with its ID, or raises OSError (socket.timeout) without one."""
    qid = random.randrange(65536)
    q = query_packet(qid, name, flags)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, (host, port))
        while True:
            data, _ = s.recvfrom(4096)
            if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid:
                return data


def dns_query(name, port, timeout=1.0, host="127.0.0.1"):
    """One UDP A query to `host`:`port`; returns (rcode, [A addresses]) or raises."""
    data = udp_exchange(name, port, timeout, host=host)
    rcode = data[3] & 0xF
    ancount = struct.unpack(">H", data[6:8])[0]
    # skip the question
    i = 12
    while data[i] != 0:
        i += data[i] + 1
    i += 5
    addrs = []
    for _ in range(ancount):
        if data[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while data[i] != 0:
                i += data[i] + 1
            i += 1
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(data[i:i + 4]))
        i += rdlen
    return rcode, addrs


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def tcp_passive_opens():
    """TCP connections accepted in this network namespace (only the upstream accepts any)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("PassiveOpens")])


def established_to(port):
    r = run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], timeout=5, check=False)
    return sum(1 for line in r.stdout.splitlines() if line.strip())


class ConnSampler(threading.Thread):
    """Peak number of TLS connections open to the upstream, sampled every 0.25 s."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.peak, self.stop_ev = port, 0, threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            self.peak = max(self.peak, established_to(self.port))
            self.stop_ev.wait(0.25)

    def stop(self):
        self.stop_ev.set()
        self.join(5)
        return self.peak


def udp_bound(port):
    r = run(["ss", "-Hlun", f"( sport = :{port} )"], timeout=5, check=False)
    return any(line.strip() for line in r.stdout.splitlines())


def version_of(cmd):
    try:
        r = run(cmd, timeout=10, check=False)
        out = (r.stdout + r.stderr).strip().splitlines()
        for line in out:
            if any(ch.isdigit() for ch in line) and ("ersion" in line or line.split()[0].lower() in cmd[0]):
                return line.strip()
        return out[0].strip() if out else "?"
    except Exception as e:  # noqa: BLE001
        return f"? ({e})"


def version_of_all(cmd):
    try:
        r = run(cmd, timeout=10, check=False)
        return r.stdout + r.stderr
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/etc/os-release") as f:
            osr = dict(line.rstrip().split("=", 1) for line in f if "=" in line)
        osname = osr.get("PRETTY_NAME", "?").strip('"')
    except OSError:
        osname = "?"
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "os": osname, "hostname": socket.gethostname(),
            "loadavg_at_start": os.getloadavg()}


class Procs:
    """Every daemon started by the inner phase, stopped in reverse order on exit."""

    def __init__(self):
        self.procs = []

    def start(self, name, cmd, logfile, cwd=None, env=None):
        lf = open(logfile, "w")
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=cwd, start_new_session=True,
                             env=None if env is None else {**os.environ, **env})
        lf.close()
        p.bench_name = name
        self.procs.append(p)
        return p

    def stop(self, p, grace=3.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p, grace=2.0)


def tail(path, n=8):
    try:
        with open(path, errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
        return " | ".join(lines[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Certificates and the DoT upstream


def make_certs(d):
    def ossl(*args):
        run(["openssl", *args], cwd=d, timeout=60)

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dns-proxy bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    def server_cert(stem, name):
        """STEM.key and STEM.pem: a server certificate for `name` and 127.0.0.1 from the CA."""
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", "/CN=" + name)
        with open(os.path.join(d, f"{stem}.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\n"
                    f"subjectAltName=DNS:{name},IP:127.0.0.1\n")
        ossl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{stem}.pem", "-days", "2", "-extfile", f"{stem}.ext")
        os.chmod(os.path.join(d, f"{stem}.key"), 0o644)  # daemons may drop privileges

    server_cert("upstream", TLS_NAME)
    # The forwarders' own certificate, for their DoT and DoH listeners.
    server_cert("listener", LISTENER_NAME)


UNBOUND_COMMON = """\
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  do-ip4: yes
  do-udp: yes
  do-tcp: yes
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  qname-minimisation: no
"""


def unbound_upstream_server(d, dot, udp):
    """The start of an upstream unbound's `server:` clause: DoT on 127.0.0.1:`dot` with the
    bench certificate, plain DNS on 127.0.0.1:`udp`, and the statistics the runner reads."""
    return f"""server:
{UNBOUND_COMMON.format(d=d)}
  interface: 127.0.0.1@{dot}
  interface: 127.0.0.1@{udp}
  tls-port: {dot}
  tls-service-key: "{d}/upstream.key"
  tls-service-pem: "{d}/upstream.pem"
  incoming-num-tcp: 1000
  so-reuseport: no
  extended-statistics: yes
  statistics-interval: 0
  statistics-cumulative: yes
"""


def unbound_remote_control(d, name):
    """unbound's `remote-control:` clause on the Unix socket d/`name` (for stats_noreset)."""
    return f"""remote-control:
  control-enable: yes
  control-interface: "{d}/{name}"
  control-use-cert: no
"""


def upstream_conf(d):
    return unbound_upstream_server(d, UPSTREAM_DOT, UPSTREAM_UDP) + f"""\
  interface: 127.0.0.1@{UPSTREAM_DOH}
  https-port: {UPSTREAM_DOH}
  http-endpoint: "/dns-query"
  # Never recurse: bench. and everything under it from local data, the rest refused.
  local-zone: "." refuse
  local-zone: "bench." redirect
  local-data: "bench. 60 IN A {ANSWER_IP}"
""" + unbound_remote_control(d, "upstream.ctl")


def upstream_stats(d, conf="upstream.conf"):
    r = run(["unbound-control", "-c", f"{d}/{conf}", "stats_noreset"], timeout=10, check=False)
    stats = {}
    for line in r.stdout.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            try:
                stats[k] = float(v)
            except ValueError:
                pass
    return stats


# --------------------------------------------------------------------------------------------
# Query files


def write_names(path, prefix, count, zone="bench"):
    """`count` unique names under `zone`: a random run token plus a counter."""
    token = "%08x" % random.getrandbits(32)
    with open(path, "w") as f:
        chunk = []
        for i in range(count):
            chunk.append(f"{prefix}{i:x}-{token}.{zone} A\n")
            if len(chunk) == 50000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return count


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    # nearest rank
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


# --------------------------------------------------------------------------------------------
# Outer phase of bench/soak and bench/abuse


def outer(script, inner_args, budget_s, no_install=False, no_build=False, no_chart=False):
    """Install dnsperf/unbound (and matplotlib), build, then run `script --inner ...` in fresh
    net+pid+mount namespaces, killed after `budget_s`. Exits with the inner status."""
    if os.geteuid() != 0:
        sys.exit(f"{PROG}: run as root (apt, network namespace)")
    for tool in ["unshare", "ip", "ss", "openssl"]:
        if not shutil.which(tool):
            sys.exit(f"{PROG}: {tool} is required")
    if not no_install:
        install(["dnsperf", "unbound"], ["unbound", "unbound-resolvconf"], no_chart)
    for tool in ["dnsperf", "unbound"]:
        if not shutil.which(tool):
            sys.exit(f"{PROG}: {tool} is required (apt-get install dnsperf unbound)")
    if not no_build:
        build()
    if not os.path.exists(BINARY):
        sys.exit(f"{PROG}: {BINARY} missing (cargo build --release failed?)")
    workdir = tempfile.mkdtemp(prefix=f"dns-proxy-{PROG}.")
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
           sys.executable, os.path.abspath(script), "--inner", "--workdir", workdir] + inner_args
    log(f"running in private namespaces (work dir {workdir}, limit {budget_s} s)")
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the inner process gets it and cleans up
    proc = subprocess.Popen(cmd)
    rc = 1
    try:
        rc = proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        log(f"time limit of {budget_s} s reached; stopping")
        proc.terminate()
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()  # --kill-child: the inner PID 1 dies, the kernel kills the rest
            proc.wait()
        rc = 124
    finally:
        signal.signal(signal.SIGINT, old)
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(rc)


# --------------------------------------------------------------------------------------------
# Inner phase


def inner(main, workdir):
    """Run main(procs) as PID 1 of the private PID namespace; stop everything on any exit."""
    if os.getpid() != 1:
        sys.exit(f"{PROG} --inner: must be PID 1 of its own PID namespace (run {PROG} without --inner)")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    procs = Procs()
    rc = 0
    try:
        run(["ip", "link", "set", "lo", "up"], timeout=10)
        rc = main(procs) or 0
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        rc = 130
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        log(f"failed: {e}")
        rc = 1
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(rc)  # PID 1 exits: the kernel kills anything left in the namespace


class Upstream:
    """unbound as the DoT upstream (bench/run's configuration), which can be killed and restarted."""

    def __init__(self, procs, d):
        self.procs, self.d = procs, d
        self.conf = f"{d}/upstream.conf"
        self.logf = f"{d}/upstream.log"
        self.p = None
        with open(self.conf, "w") as f:
            f.write(upstream_conf(d))

    def start(self, wait=True):
        try:
            os.remove(f"{self.d}/upstream.ctl")  # a killed unbound leaves its control socket
        except OSError:
            pass
        self.p = self.procs.start("upstream", ["unbound", "-d", "-c", self.conf], self.logf)
        if wait:
            self.wait_ready()
        return self.p

    def wait_ready(self, seconds=15):
        """Seconds until it answers over plain UDP; raises if it does not."""
        t0 = time.monotonic()
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"upstream exited with {self.p.returncode}: {tail(self.logf)}")
            try:
                rcode, addrs = dns_query("ready.bench", UPSTREAM_UDP, timeout=0.3)
                if rcode == 0 and ANSWER_IP in addrs:
                    return time.monotonic() - t0
            except (OSError, IndexError, struct.error):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"upstream not ready in {seconds} s: {tail(self.logf)}")

    def kill(self):
        """SIGKILL, no goodbye: its TLS connections just break."""
        p = self.p
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(5)
        if p in self.procs.procs:
            self.procs.procs.remove(p)
        self.p = None


METRICS_PORT = 9153


def parse_metrics(text):
    """The counters the abuse report uses, from dns-proxy's Prometheus text: queries over UDP,
    answers from upstreams, cache hits, SERVFAIL answers, rate-limited and dropped queries."""
    c = {"udp": 0, "answered": 0, "cache": 0, "failed": 0, "rate_limited": 0, "dropped": 0}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{", 1)[0]
        try:
            v = int(float(value))
        except ValueError:
            continue
        udp = 'transport="udp"' in series
        if name == "dns_proxy_queries_total":
            c["udp"] += v if udp else 0
            c["failed"] += v if 'rcode="SERVFAIL"' in series else 0
        elif name == "dns_proxy_queries_dropped_total":
            c["udp"] += v if udp else 0
            c["dropped"] += v
        elif name == "dns_proxy_upstream_queries_total":
            c["answered"] += v
        elif name == "dns_proxy_cache_hits_total":
            c["cache"] += v
        elif name == "dns_proxy_rate_limited_total":
            c["rate_limited"] += v
    return c


class Proxy:
    """dns-proxy with a config file, a notify socket (READY=1), a metrics endpoint and a log."""

    def __init__(self, procs, d, name="dns-proxy", extra=None):
        self.procs, self.d, self.name = procs, d, name
        self.conf = f"{d}/{name}.toml"
        self.logf = f"{d}/{name}.log"
        self.sock_path = f"{d}/{name}.notify"
        # The upstream serves bench. from local data under a root it refuses: nothing to
        # validate against (bench/run's DNSSEC workloads have a signed world of their own).
        lines = [f'listen = ["127.0.0.1:{PROXY_PORT}"]', 'timeout = "2000ms"', 'log_level = "info"',
                 'dnssec = "off"']
        for k, v in (extra or {}).items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines += ["", "[[upstream]]", f'address = "127.0.0.1:{UPSTREAM_DOT}"',
                  f'tls_name = "{TLS_NAME}"', f'ca_file = "{d}/ca.pem"',
                  "", "[metrics]", f'listen = "127.0.0.1:{METRICS_PORT}"']
        self.config_text = "\n".join(lines) + "\n"
        with open(self.conf, "w") as f:
            f.write(self.config_text)
        self.p = None
        self.ready_queries = 0   # queries start() sent to check it answers
        self.status_line = None  # the last STATUS= line
        self._sock = None

    def start(self):
        try:
            os.remove(self.sock_path)
        except OSError:
            pass
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.sock_path)
        self._sock.settimeout(0.5)
        self.p = self.procs.start(self.name, [BINARY, "--config", self.conf, "--log", "stderr"],
                                  self.logf, cwd=self.d, env={"NOTIFY_SOCKET": self.sock_path})
        ready = threading.Event()
        threading.Thread(target=self._read_notify, args=(ready,), daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name}: no READY=1 in 10 s: {tail(self.logf)}")
        deadline = time.time() + 10
        while True:
            self.ready_queries += 1
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}: {tail(self.logf)}")
            try:
                rcode, addrs = dns_query("ready.bench", PROXY_PORT, timeout=0.5)
                if rcode == 0 and ANSWER_IP in addrs:
                    return self.p
            except (OSError, IndexError, struct.error):
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{self.name}: no answer in 10 s: {tail(self.logf)}")
            time.sleep(0.1)

    def _read_notify(self, ready):
        sock = self._sock
        while True:
            try:
                data = sock.recv(65536).decode(errors="replace")
            except socket.timeout:
                if self.p is None or self.p.poll() is not None:
                    return
                continue
            except OSError:
                return
            for line in data.splitlines():
                if line == "READY=1":
                    ready.set()
                elif line.startswith("STATUS="):
                    self.status_line = line[7:]

    def counters(self):
        """The daemon's counters now, from its metrics endpoint; None if it cannot be read."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=3) as r:
                return parse_metrics(r.read().decode(errors="replace"))
        except OSError:
            return None

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def stop(self):
        if self.p is not None:
            self.procs.stop(self.p)
        if self._sock is not None:
            self._sock.close()


# dnsperf's summary lines: (start, key, index of the figure among the words, its conversion).
SUMMARY_FIELDS = [("Queries sent:", "sent", 2, int), ("Queries completed:", "completed", 2, int),
                  ("Queries lost:", "lost", 2, int), ("Queries per second:", "qps", 3, float),
                  ("Run time (s):", "runtime_s", 3, float),
                  ("Average Latency (s):", "mean_ms", 3, lambda v: float(v) * 1000)]


def summary_line(s, res):
    """Takes the figure of one stripped line of dnsperf's summary into `res` (sent, completed,
    lost, qps, runtime_s, mean_ms; file_exhausted when it ran out of names); whether it was
    one of those."""
    for start, key, index, conv in SUMMARY_FIELDS:
        if s.startswith(start):
            res[key] = conv(s.split()[index])
            return True
    if "end of file" in s:
        res["file_exhausted"] = True
        return True
    return False


def parse_summary(path):
    """dnsperf's summary: sent, completed, lost, the response codes, QPS; with -v, the first 50
    answers other than NOERROR as [rcode, name, latency s]."""
    res = {"sent": None, "completed": None, "lost": None, "rcodes": {}, "not_noerror": [],
           "qps": None, "runtime_s": None, "mean_ms": None, "file_exhausted": False}
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("> "):  # -v: "> RCODE name type latency"
                if not line.startswith("> NOERROR"):
                    parts = line.split()
                    fails = res["not_noerror"]
                    if len(fails) < 50 and len(parts) >= 5:
                        fails.append([parts[1], parts[2], float(parts[4])])
                continue
            s = line.strip()
            if summary_line(s, res):
                continue
            if s.startswith("Response codes:"):
                parts = s.split(":", 1)[1].replace(",", " ").split()
                # "NOERROR 2000 (100.00%) SERVFAIL 3 (0.15%)"
                for i in range(0, len(parts) - 1):
                    if parts[i].isalpha() and parts[i].isupper() and parts[i + 1].isdigit():
                        res["rcodes"][parts[i]] = int(parts[i + 1])
    if res["sent"] is None:
        raise RuntimeError("dnsperf gave no statistics: " + tail(path, 4))
    return res


def udp_counters():
    """The kernel's UDP counters of this network namespace (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}


def udp_socket_drops(port):
    """Datagrams the kernel dropped at the UDP sockets bound to local `port` (the `drops`
    column of /proc/net/udp: receive buffer full), summed; None if there is none."""
    total, found = 0, False
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 13 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                total += int(parts[-1])
                found = True
    return total if found else None


def write_json(name, doc):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    return path


def mib(kib):
    return None if kib is None else kib / 1024.0


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)
