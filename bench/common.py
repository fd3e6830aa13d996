"""Shared by bench/soak and bench/abuse (not by bench/run). See bench/README.md.

bench/run is loaded as a module (`R`) for its helpers: certificates, the upstream's
configuration, dnsperf's output, /proc readings, process handling, installation and build.
What is added here: the outer phase (root, packages, build, private namespaces with a time
limit), the inner wrapper (PID 1, signals, cleanup), an upstream that can be killed and
restarted, and dns-proxy started with a config file, a notify socket (READY=1) and its metrics
endpoint, from which the daemon's own counters are read while it runs.
"""

import importlib.machinery
import importlib.util
import json
import os
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


def _load_run():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run")
    loader = importlib.machinery.SourceFileLoader("bench_run", path)
    spec = importlib.util.spec_from_loader("bench_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


R = _load_run()

RESULTS = R.RESULTS
BINARY = R.BINARY
PROXY_PORT = 5301
PROG = os.path.basename(sys.argv[0])


def log(msg):
    print(f"[{PROG} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Outer phase


def outer(script, inner_args, budget_s, no_install=False, no_build=False, no_chart=False):
    """Install dnsperf/unbound (and matplotlib), build, then run `script --inner ...` in fresh
    net+pid+mount namespaces, killed after `budget_s`. Exits with the inner status."""
    if os.geteuid() != 0:
        sys.exit(f"{PROG}: run as root (apt, network namespace)")
    for tool in ["unshare", "ip", "ss", "openssl"]:
        if not shutil.which(tool):
            sys.exit(f"{PROG}: {tool} is required")
    if not no_install:
        # bench/run's installer, limited to what these scripts use.
        R.APT_PACKAGES = ["dnsperf", "unbound"]
        R.SERVICES = ["unbound", "unbound-resolvconf"]
        R.install(type("A", (), {"no_chart": no_chart})())
    for tool in ["dnsperf", "unbound"]:
        if not shutil.which(tool):
            sys.exit(f"{PROG}: {tool} is required (apt-get install dnsperf unbound)")
    if not no_build:
        R.build()
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
    procs = R.Procs()
    rc = 0
    try:
        R.run(["ip", "link", "set", "lo", "up"], timeout=10)
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
            f.write(R.upstream_conf(d))

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
                raise RuntimeError(f"upstream exited with {self.p.returncode}: {R.tail(self.logf)}")
            try:
                rcode, addrs = R.dns_query("ready.bench", R.UPSTREAM_UDP, timeout=0.3)
                if rcode == 0 and R.ANSWER_IP in addrs:
                    return time.monotonic() - t0
            except (OSError, IndexError, struct.error):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"upstream not ready in {seconds} s: {R.tail(self.logf)}")

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
        lines = [f'listen = ["127.0.0.1:{PROXY_PORT}"]', 'timeout = "2000ms"', 'log_level = "info"']
        for k, v in (extra or {}).items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines += ["", "[[upstream]]", f'address = "127.0.0.1:{R.UPSTREAM_DOT}"',
                  f'tls_name = "{R.TLS_NAME}"', f'ca_file = "{d}/ca.pem"',
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
            raise RuntimeError(f"{self.name}: no READY=1 in 10 s: {R.tail(self.logf)}")
        deadline = time.time() + 10
        while True:
            self.ready_queries += 1
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}: {R.tail(self.logf)}")
            try:
                rcode, addrs = R.dns_query("ready.bench", PROXY_PORT, timeout=0.5)
                if rcode == 0 and R.ANSWER_IP in addrs:
                    return self.p
            except (OSError, IndexError, struct.error):
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{self.name}: no answer in 10 s: {R.tail(self.logf)}")
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
            if s.startswith("Queries sent:"):
                res["sent"] = int(s.split()[2])
            elif s.startswith("Queries completed:"):
                res["completed"] = int(s.split()[2])
            elif s.startswith("Queries lost:"):
                res["lost"] = int(s.split()[2])
            elif s.startswith("Queries per second:"):
                res["qps"] = float(s.split()[3])
            elif s.startswith("Run time (s):"):
                res["runtime_s"] = float(s.split()[3])
            elif s.startswith("Average Latency (s):"):
                res["mean_ms"] = float(s.split()[3]) * 1000
            elif "end of file" in s:
                res["file_exhausted"] = True
            elif s.startswith("Response codes:"):
                parts = s.split(":", 1)[1].replace(",", " ").split()
                # "NOERROR 2000 (100.00%) SERVFAIL 3 (0.15%)"
                for i in range(0, len(parts) - 1):
                    if parts[i].isalpha() and parts[i].isupper() and parts[i + 1].isdigit():
                        res["rcodes"][parts[i]] = int(parts[i + 1])
    if res["sent"] is None:
        raise RuntimeError("dnsperf gave no statistics: " + R.tail(path, 4))
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
