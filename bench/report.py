"""bench/run's report: the table (stdout and bench/results/latest.txt), the JSON and the chart.
See bench/README.md ("Report").

Pure functions of the rows the runner (workloads.py) collected, but for the files written.
"""

import json
import os

from common import RESULTS, fmt, log, machine_info
from peers import DOH_PATH, UPSTREAM_KIND_LABEL
from links import DOMAINS_PER_LINK, LINKS
from workloads import (ALL_WORKLOADS, DNSSEC_WORKLOADS, DOH_UPSTREAM_WORKLOADS, ENCRYPTED_WORKLOADS,
                       LIGHT_RATES, LIGHT_SOCKETS, LINKS_WORKLOADS)


def report(a, rows, versions, started, extras=None, light=None, direct=None):
    machine = machine_info()
    ratios = compute_ratios(rows)
    doc = {"date": started.isoformat(timespec="seconds"), "machine": machine,
           "settings": {"duration_s": a.duration, "paced_rate_qps": a.rate, "clients": a.clients,
                        "outstanding": a.outstanding, "quick": a.duration <= 2.0,
                        "dnsperf": "-T 1 -t 2 -v; hot: 100 names looped; cold: unique names, -n 1; "
                                   f"paced: unique names, -Q {a.rate}, -n 1",
                        "encrypted": ("not run" if a.no_encrypted else
                                      f"dot-*: dnsperf -m dot; doh-*: dnsperf -m doh, HTTP/2, "
                                      f"{a.doh_method} {DOH_PATH}; hot and cold as above"),
                        "encrypted_only": a.encrypted_only,
                        "links": ("not run" if a.no_links or a.encrypted_only else
                                  f"links-*: dns-proxy with {LINKS} links x {DOMAINS_PER_LINK} "
                                  "domains over org.freedesktop.resolve1, hot and cold as above; "
                                  "the other rows: link_dns = \"off\"")},
           "versions": versions, "rows": rows, "ratios_dns_proxy_to_best_peer": ratios,
           "dns_proxy": extras or {},
           "dnssec": dnssec_checks(rows),
           "links": links_checks(rows),
           "doh_upstream": doh_upstream_checks(rows),
           "light": {"rates_qps": LIGHT_RATES, "duration_s": a.light_duration,
                     "fresh_starts": a.light_starts, "sockets": LIGHT_SOCKETS,
                     "upstreams": UPSTREAM_KIND_LABEL, "runs": light or [],
                     "summary": summarize_light(light or []), "direct": direct}}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    text = render_table(doc)
    print(text)
    with open(os.path.join(RESULTS, "latest.txt"), "w") as f:
        f.write(text + "\n")
    if not a.no_chart:
        try:
            chart(doc, os.path.join(RESULTS, "latest.png"))
        except Exception as e:  # noqa: BLE001
            log(f"no chart: {e}")
    log(f"wrote {RESULTS}/latest.json, latest.txt" + ("" if a.no_chart else ", latest.png"))


# metric: (key, True when higher is better)
RATIO_METRICS = [("qps", True), ("p50_ms", False), ("p99_ms", False),
                 ("cpu_us_per_query", False), ("rss_after_kib", False),
                 ("tls_connections_opened", False)]


def usable(r):
    return "skipped" not in r and r.get("completed") and r["failed"] + (r["lost"] or 0) <= 0.01 * max(1, r["sent"] or 1)


def compute_ratios(rows):
    out = {}
    for w in ALL_WORKLOADS:
        dp = next((r for r in rows if r["forwarder"] == "dns-proxy" and r["workload"] == w and usable(r)), None)
        peers = [r for r in rows if r["forwarder"] not in ("dns-proxy", "ceiling")
                 and r["workload"] == w and usable(r)]
        if not dp or not peers:
            continue
        res = {}
        for key, higher in RATIO_METRICS:
            if key == "qps" and w == "paced":
                continue  # the rate is fixed
            cand = [r for r in peers if r.get(key) is not None]
            if dp.get(key) is None or not cand:
                continue
            best = max(cand, key=lambda r: r[key]) if higher else min(cand, key=lambda r: r[key])
            if best[key]:
                ratio = dp[key] / best[key]
            else:
                ratio = 1.0 if not dp[key] else None  # 0 vs 0: equal; n vs 0: no ratio
            res[key] = {"dns_proxy": dp[key], "best_peer": best["forwarder"],
                        "best_peer_value": best[key], "ratio": ratio,
                        "better": "higher" if higher else "lower"}
        out[w] = res
    return out


# dns-proxy's DNSSEC targets, CPU per query: (check, what is compared, (forwarder, workload) of
# the figure, (forwarder, workload) of the reference, largest ratio allowed). Cache hits must not
# change: 1.10 is the noise of one run on a shared machine.
DNSSEC_TARGETS = [
    ("unsigned-cold", "unique names of an unsigned zone, dns-proxy validating / not validating",
     ("dns-proxy", "unsigned-cold-on"), ("dns-proxy", "unsigned-cold-off"), 1.15),
    ("signed-cold", "unique names of a signed zone, dns-proxy validating / unbound validating",
     ("dns-proxy", "signed-cold-on"), ("unbound", "signed-cold-on"), 1.0),
    ("signed-hot", "cache hits of a signed zone, dns-proxy validating / not validating",
     ("dns-proxy", "signed-hot-on"), ("dns-proxy", "signed-hot-off"), 1.10),
]


# dns-proxy's per-link DNS target, CPU per query, in the same shape: with LINKS links of
# DOMAINS_PER_LINK domains each, hot and cold unchanged within the noise of one run (10 %)
# against no link configured.
LINKS_TARGETS = [
    (kind, f"{kind} names, dns-proxy with {LINKS} links x {DOMAINS_PER_LINK} domains / no link",
     ("dns-proxy", f"links-{kind}"), ("dns-proxy", kind), 1.10)
    for kind in ("hot", "cold")
]


# DNS over HTTPS upstreams, CPU per query: unique names forwarded over DoH cost at most 1.5x
# those forwarded over DoT to the same unbound; against dnsdist's DoH backend to it, no dearer
# (cold names against dnsdist, cache hits against dnsdist with its packet cache).
DOH_UPSTREAM_TARGETS = [
    ("cold", "unique names, dns-proxy over DoH / over DoT to the same unbound",
     ("dns-proxy", "doh-up-cold"), ("dns-proxy", "cold"), 1.5),
    ("cold dnsdist", "unique names over DoH, dns-proxy / dnsdist",
     ("dns-proxy", "doh-up-cold"), ("dnsdist", "doh-up-cold"), 1.0),
    ("hot dnsdist", "cache hits over DoH, dns-proxy / dnsdist with its packet cache",
     ("dns-proxy", "doh-up-hot"), ("dnsdist+cache", "doh-up-hot"), 1.0),
]


def doh_upstream_checks(rows):
    return cpu_checks(rows, DOH_UPSTREAM_TARGETS)


def dnssec_checks(rows):
    return cpu_checks(rows, DNSSEC_TARGETS)


def links_checks(rows):
    return cpu_checks(rows, LINKS_TARGETS)


def cpu_checks(rows, targets):
    """Each target with its figures, ratio and whether it holds (None: not measured, or a row
    with more than 1 % lost or failed)."""
    def cpu(fwd, workload):
        r = next((r for r in rows if r["forwarder"] == fwd and r["workload"] == workload), None)
        return r.get("cpu_us_per_query") if r and usable(r) else None
    out = []
    for check, what, figure, reference, limit in targets:
        value, ref = cpu(*figure), cpu(*reference)
        ratio = value / ref if value is not None and ref else None
        out.append({"check": check, "what": what, "cpu_us_per_query": value,
                    "reference_cpu_us_per_query": ref, "ratio": ratio, "limit": limit,
                    "holds": None if ratio is None else ratio <= limit})
    return out


def render_dnssec(doc):
    return render_checks(doc, DNSSEC_WORKLOADS, doc["dnssec"], [
        "DNSSEC: the signed test world (tests/dnssec/world.sh) served by knotd, behind an "
        "unbound that does not validate;", "-on rows validate against the world's root anchor, "
        "-off rows do not. CPU us per query of the forwarder:"])


def render_doh_upstream(doc):
    return render_checks(doc, DOH_UPSTREAM_WORKLOADS, doc.get("doh_upstream", []), [
        "DoH upstream: doh-up-* rows forward over DNS over HTTPS (HTTP/2) to the same unbound as "
        "the DoT rows. CPU us per query:"])


def render_links(doc):
    return render_checks(doc, LINKS_WORKLOADS, doc["links"], [
        f"Per-link DNS: links-* rows = dns-proxy with {LINKS} links of {DOMAINS_PER_LINK} domains each "
        "pushed over org.freedesktop.resolve1", "(none matching the names asked); hot and cold rows = "
        "link_dns = \"off\", no link. CPU us per query:"])


def render_checks(doc, workloads, checks, intro):
    """The lines of `checks` (cpu_checks), under `intro`, if a row of `workloads` was run."""
    if not any(r["workload"] in workloads and "skipped" not in r for r in doc["rows"]):
        return []
    lines = [""] + intro
    for c in checks:
        verdict = {True: "holds", False: "FAILS", None: "not measured"}[c["holds"]]
        lines.append(f"  {c['check']:<13} {fmt(c['cpu_us_per_query'], '.1f')} / "
                     f"{fmt(c['reference_cpu_us_per_query'], '.1f')} = "
                     f"{fmt(c['ratio'], '.2f')}x (limit {c['limit']:.2f}x): {verdict}; {c['what']}")
    return lines


def median(vals):
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def summarize_light(runs):
    """Per forwarder, upstream kind and rate, over the fresh starts: medians and worst cases."""
    out = []
    keys = []
    for r in runs:
        k = (r["forwarder"], r["upstream"], r["rate"])
        if k not in keys:
            keys.append(k)
    for fwd, kind, rate in keys:
        rs = [r for r in runs if (r["forwarder"], r["upstream"], r["rate"]) == (fwd, kind, rate)]
        ok = [r for r in rs if "skipped" not in r]
        row = {"forwarder": fwd, "upstream": kind, "rate": rate, "starts": len(ok),
               "skipped": [r["skipped"] for r in rs if "skipped" in r]}
        if ok:
            def col(phase, key):
                return [r[phase][key] for r in ok if r[phase][key] is not None]
            row.update({
                "first_query_ms_median": median([r.get("first_query_ms") for r in ok]),
                "first_query_ms_max": max((r["first_query_ms"] for r in ok
                                           if r.get("first_query_ms") is not None), default=None),
                "first_second_p50_ms_median": median(col("first_second", "p50_ms")),
                "first_second_p50_ms_max": max(col("first_second", "p50_ms"), default=None),
                "p50_ms_median": median(col("all", "p50_ms")),
                "p50_ms_max": max(col("all", "p50_ms"), default=None),
                "p99_ms_max": max(col("all", "p99_ms"), default=None),
                "lost": sum(r["all"]["lost"] for r in ok),
                "failed": sum(r["all"]["failed"] for r in ok),
                "sent": sum(r["all"]["sent"] for r in ok),
                "cpu_us_per_query_median": median([r.get("cpu_us_per_query") for r in ok]),
            })
        out.append(row)
    return out


def light_verdict(summary):
    """dns-proxy against the upstream's own plain-UDP p50, per kind and rate: its p50 in every
    fresh start, whole run and first second alone, at most 2x that + 0.3 ms."""
    lines = []
    for r in summary:
        if r["forwarder"] != "dns-proxy" or not r["starts"]:
            continue
        base = next((c for c in summary if c["forwarder"] == "ceiling" and c["upstream"] == r["upstream"]
                     and c["rate"] == r["rate"] and c["starts"]), None)
        if not base or base["p50_ms_median"] is None:
            continue
        limit = 2 * base["p50_ms_median"] + 0.3
        worst = max(r["p50_ms_max"] or 0, r["first_second_p50_ms_max"] or 0)
        lines.append(f"  {r['upstream']:<8} {r['rate']:>5} q/s: worst p50 {worst:.3f} ms "
                     f"(first second or whole run, any start) vs limit {limit:.3f} ms "
                     f"(2 x {base['p50_ms_median']:.3f} + 0.3): {'holds' if worst <= limit else 'FAILS'}")
    return lines


def table_lines(hdr, table, widths, short):
    """The header, a rule and the rows (the first two columns to the left, the others to the
    right), a blank line between forwarders; `short(row)` is the line of a row that does not
    fill every column, None for one that does."""
    def full(cells):
        return "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(cells))
    lines = [full(hdr), "  ".join("-" * w for w in widths)]
    prev = None
    for row in table:
        if prev is not None and row[0] != prev:
            lines.append("")
        prev = row[0]
        lines.append(short(row) or full(row))
    return lines


def render_light(doc):
    light = doc.get("light") or {}
    summary = light.get("summary") or []
    if not summary:
        return []
    lines = ["", f"Light load: open loop (each query leaves on schedule), unique names, "
             f"{light['sockets']} UDP sockets, {light['duration_s']:g} s per run, each forwarder "
             f"started afresh for each run ({light['fresh_starts']} starts per rate and upstream).",
             "Upstreams: " + "; ".join(f"{k} = {v}" for k, v in light["upstreams"].items()) + ".",
             "first q = the first query after the forwarder bound its port (median / max over the "
             "starts); p50 1st s = p50 of the first second of the run; p50 = whole run "
             "(median / max over the starts); p99 = worst start.", ""]
    hdr = ["forwarder", "upstream", "q/s", "first q ms", "p50 1st s ms", "p50 ms", "p99 ms",
           "lost", "fail"]
    table = []
    for r in summary:
        if not r["starts"]:
            table.append([r["forwarder"], r["upstream"], str(r["rate"]),
                          "not run: " + "; ".join(r["skipped"])[:200]])
            continue
        two = lambda a, b: f"{fmt(r[a], '.3f')} / {fmt(r[b], '.3f')}"  # noqa: E731
        table.append([r["forwarder"], r["upstream"], str(r["rate"]),
                      "-" if r["forwarder"] == "ceiling" else
                      f"{fmt(r['first_query_ms_median'], '.1f')} / {fmt(r['first_query_ms_max'], '.1f')}",
                      two("first_second_p50_ms_median", "first_second_p50_ms_max"),
                      two("p50_ms_median", "p50_ms_max"), fmt(r["p99_ms_max"], ".3f"),
                      str(r["lost"]), str(r["failed"])])
    full = [row for row in table if len(row) == len(hdr)]
    widths = [max([len(hdr[i])] + [len(row[i]) for row in full]) for i in range(len(hdr))]
    lines.extend(table_lines(hdr, table, widths, lambda row: None if len(row) == len(hdr) else
                             f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}"))
    lines.append("ceiling = the same open-loop load straight at the upstream's plain UDP port, run as "
                 "many times as a forwarder is started (median / max over the runs); the limit "
                 "below uses the median.")
    verdict = light_verdict(summary)
    if verdict:
        lines.append("")
        lines.append("dns-proxy p50 against the upstream's own plain-UDP p50:")
        lines.extend(verdict)
    lines.extend(render_direct(light.get("direct"), summary))
    return lines


def render_direct(direct, summary):
    """unbound's own round trips with no forwarder (bench/direct), and how much of dns-proxy's
    DoH-over-DoT difference at the same rate is the upstream's."""
    if not direct:
        return []
    if "skipped" in direct:
        return ["", f"unbound alone (bench/direct): not run: {direct['skipped']}"]
    rate = direct["rate"]
    own = {k: direct[k]["p50_ms"] for k in ("udp", "dot", "doh")}
    lines = ["", f"unbound alone, one query at a time at {rate:g} q/s straight from a client "
             f"(bench/direct, median of {direct['rounds']} interleaved rounds), p50: "
             f"UDP {own['udp']:.3f}, DoT {own['dot']:.3f}, DoH {own['doh']:.3f} ms; "
             f"its DoH costs {own['doh'] - own['dot']:+.3f} ms over its DoT."]
    p50 = {r["upstream"]: r["p50_ms_median"] for r in summary
           if r["forwarder"] == "dns-proxy" and r["rate"] == rate and r["starts"]}
    if p50.get("unbound") is not None and p50.get("unbound-doh") is not None:
        ours = p50["unbound-doh"] - p50["unbound"]
        lines.append(f"dns-proxy at {rate:g} q/s, median p50: over DoH {p50['unbound-doh']:.3f}, over "
                     f"DoT {p50['unbound']:.3f} ms: {ours:+.3f} ms, of which the upstream's "
                     f"{own['doh'] - own['dot']:+.3f} and dns-proxy's {ours - (own['doh'] - own['dot']):+.3f}.")
    return lines


def render_encrypted(doc):
    """The DoT-in and DoH-in workloads side by side: QPS and CPU per query of each forwarder,
    and dns-proxy against the peer with the most QPS (goal: at least its QPS, at no more CPU
    per query)."""
    rows = [r for r in doc["rows"] if r["workload"] in ENCRYPTED_WORKLOADS]
    if not rows:
        return []
    present = [w for w in ENCRYPTED_WORKLOADS if any(r["workload"] == w for r in rows)]
    names = []
    for r in rows:
        if r["forwarder"] not in names:
            names.append(r["forwarder"])
    lines = ["", "Clients over DNS over TLS and DNS over HTTPS: " + doc["settings"]["encrypted"]
             + ". QPS and CPU us per query:", ""]
    hdr = ["forwarder"] + [f"{w} {k}" for w in present for k in ("QPS", "CPU/q")]
    table = []
    for n in names:
        cells = [n]
        for w in present:
            r = next((r for r in rows if r["forwarder"] == n and r["workload"] == w), None)
            if r is None or "skipped" in r:
                cells += ["n/a", "-"]
            else:
                mark = "!" if not usable(r) else ""
                cells += [fmt(r["qps"], ".0f") + mark, fmt(r.get("cpu_us_per_query"), ".1f")]
        table.append(cells)
    widths = [max(len(hdr[i]), *(len(c[i]) for c in table)) for i in range(len(hdr))]
    lines.append("  ".join(h.ljust(widths[i]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(hdr)))
    lines.append("  ".join("-" * w for w in widths))
    for cells in table:
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)))
    lines.append("n/a: not run (reasons under \"Not measured\"); !: more than 1 % lost or failed.")
    lines.append("dnsperf 2.10's DoH client reads one TLS record at a time and keeps one answer per record:")
    lines.append("a server that puts several HTTP/2 answers in one record loses most of them (a '!' row).")
    lines.append("")
    lines.append("Goal: dns-proxy's QPS at least the best peer's, at no more CPU per query than that peer:")
    for w in present:
        dp = next((r for r in rows if r["forwarder"] == "dns-proxy" and r["workload"] == w and usable(r)), None)
        peers = [r for r in rows if r["forwarder"] != "dns-proxy" and r["workload"] == w and usable(r)]
        if not dp or not peers:
            lines.append(f"  {w:<9} no comparison (dns-proxy or every peer not measured)")
            continue
        best = max(peers, key=lambda r: r["qps"] or 0)
        qps_ok = (dp["qps"] or 0) >= (best["qps"] or 0)
        cpu_ok = (dp.get("cpu_us_per_query") is not None and best.get("cpu_us_per_query") is not None
                  and dp["cpu_us_per_query"] <= best["cpu_us_per_query"])
        lines.append(f"  {w:<9} dns-proxy {fmt(dp['qps'], '.0f')} q/s at {fmt(dp.get('cpu_us_per_query'), '.1f')} us/q; "
                     f"best peer {best['forwarder']} {fmt(best['qps'], '.0f')} q/s at "
                     f"{fmt(best.get('cpu_us_per_query'), '.1f')} us/q: QPS {'met' if qps_ok else 'MISSED'}, "
                     f"CPU {'met' if cpu_ok else 'MISSED'}")
    return lines


def render_table(doc):
    m = doc["machine"]
    s = doc["settings"]
    lines = [f"dns-proxy benchmark  {doc['date']}  {m['nproc']} CPUs: {m['cpu_model']}  "
             f"({m['os']}, kernel {m['kernel']}, load {m['loadavg_at_start'][0]:.2f} at start)",
             f"{s['duration_s']:g} s per workload{' (QUICK: rough numbers)' if s['quick'] else ''}; "
             f"dnsperf -c {s['clients']} -q {s['outstanding']}; paced at {s['paced_rate_qps']} q/s; "
             "upstream: unbound DoT on loopback", ""]
    hdr = ["forwarder", "workload", "QPS", "mean ms", "p50 ms", "p99 ms", "lost", "fail",
           "CPU us/q", "RSS idle MiB", "RSS after MiB", "TLS conns", "peak conns", "upstream q"]
    table = []
    notes = []
    # Each forwarder's rows together (its encrypted-client rows come from later starts).
    first = {}
    for i, r in enumerate(doc["rows"]):
        first.setdefault(r["forwarder"], i)
    for r in sorted(doc["rows"], key=lambda r: first[r["forwarder"]]):
        if "skipped" in r:
            notes.append(f"{r['forwarder']}: {r['skipped']}")
            table.append([r["forwarder"], r["workload"], "not run (see below)"] + [""] * (len(hdr) - 3))
            continue
        mib = lambda k: fmt(r[k] / 1024 if r.get(k) else None, ".1f")  # noqa: E731
        table.append([r["forwarder"], r["workload"] + ("*" if r.get("file_exhausted") and r["workload"].endswith("cold") else ""),
                      fmt(r["qps"], ".0f"), fmt(r["mean_ms"], ".3f"),
                      fmt(r["p50_ms"], ".3f"), fmt(r["p99_ms"], ".3f"), str(r["lost"]),
                      str(r["failed"]), fmt(r.get("cpu_us_per_query"), ".1f"), mib("rss_idle_kib"),
                      mib("rss_after_kib"), fmt(r.get("tls_connections_opened"), "d"),
                      fmt(r.get("tls_connections_peak"), "d"), fmt(r.get("upstream_tls_queries"), "d")])
    widths = [max(len(hdr[i]), *(len(row[i]) for row in table if row[2] != "not run (see below)" or i < 3)) for i in range(len(hdr))]
    lines.extend(table_lines(hdr, table, widths, lambda cells: None if cells[2] != "not run (see below)" else
                             f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]}"))
    lines.append("")
    lines.append("ceiling = dnsperf straight at the upstream's plain UDP port (its CPU/RSS columns are the upstream's).")
    lines.append("fail = answers other than NOERROR; lost = no answer within 2 s; TLS conns = TCP connections the")
    lines.append("upstream accepted during the run (kernel counter of the private namespace); peak conns = most")
    lines.append("open at once (ss, sampled every 0.25 s); upstream q = queries the upstream got over TLS.")
    if any(r["workload"] in ENCRYPTED_WORKLOADS for r in doc["rows"]):
        lines.append("dot-*/doh-*: the clients use DNS over TLS / HTTPS (their connections are accepted in the")
        lines.append("namespace too, so TLS conns is left empty; peak conns still counts the upstream's alone).")
    if any(r.get("file_exhausted") and r["workload"].endswith("cold") for r in doc["rows"]):
        lines.append("* cold: dnsperf used up the file of unique names before the time limit (QPS still valid).")
    lines.append("")
    lines.append("dns-proxy / best peer (rows with >1% lost or failed queries are left out):")
    if not doc["ratios_dns_proxy_to_best_peer"]:
        lines.append("  (no comparable rows)")
    names = {"qps": "QPS", "p50_ms": "p50", "p99_ms": "p99", "cpu_us_per_query": "CPU/q",
             "rss_after_kib": "RSS", "tls_connections_opened": "TLS conns"}
    for w, res in doc["ratios_dns_proxy_to_best_peer"].items():
        parts = []
        for k, v in res.items():
            if k == "tls_connections_opened":
                parts.append(f"{names[k]} {v['dns_proxy']} vs {v['best_peer_value']} ({v['best_peer']})")
                continue
            ratio = fmt(v["ratio"], ".2f") + "x" if v["ratio"] is not None else "n/a"
            parts.append(f"{names[k]} {ratio} vs {v['best_peer']}")
        lines.append(f"  {w:<8} " + "; ".join(parts))
    lines.append("  (QPS: higher is better; the others: lower is better)")
    if notes:
        lines.append("")
        lines.append("Not measured:")
        seen = set()
        for n in notes:
            if n not in seen:
                lines.append("  " + n)
                seen.add(n)
    lines.extend(render_encrypted(doc))
    lines.extend(render_dnssec(doc))
    lines.extend(render_doh_upstream(doc))
    lines.extend(render_links(doc))
    lines.extend(render_light(doc))
    lines.append("")
    x = doc.get("dns_proxy") or {}
    if x:
        lines.append("")
        parts = []
        if x.get("startup_ms") is not None:
            parts.append(f"exec to READY=1: {x['startup_ms']:.1f} ms (target <= 20)")
        if x.get("rss_idle_kib"):
            parts.append(f"RSS idle: {x['rss_idle_kib'] / 1024:.1f} MiB (target <= 8)")
        if x.get("rss_full_cache_kib"):
            limit = (x["cache_bound_kib"] + x["rss_idle_kib"]) * 1.1
            parts.append(f"RSS with the default 32 MiB cache full: {x['rss_full_cache_kib'] / 1024:.1f} MiB "
                         f"(target <= {limit / 1024:.1f})")
        lines.append("dns-proxy: " + "; ".join(parts))
    lines.append("Versions: " + "; ".join(f"{k}: {v}" for k, v in doc["versions"].items()))
    return "\n".join(lines)


def chart(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if "skipped" not in r]
    workloads = [w for w in ALL_WORKLOADS if any(r["workload"] == w for r in rows)]
    names = []
    for r in rows:
        if r["forwarder"] not in names:
            names.append(r["forwarder"])
    metrics = [("qps", "queries/s (higher is better)"), ("p50_ms", "p50 latency, ms"),
               ("p99_ms", "p99 latency, ms"), ("cpu_us_per_query", "CPU µs per query"),
               ("rss_after_kib", "RSS after run, MiB"), ("tls_connections_opened", "TLS connections opened")]
    if all(r.get("tls_connections_opened") is None for r in rows):
        # Clients over TLS only: the kernel's count includes theirs, the sampled peak does not.
        metrics[-1] = ("tls_connections_peak", "upstream TLS connections, peak")
    summary = [r for r in (doc.get("light") or {}).get("summary", []) if r["starts"]]
    fig, axes = plt.subplots(3 if summary else 2, 3,
                             figsize=(17 + 2 * max(0, len(workloads) - 3), 13.5 if summary else 9))
    width = 0.8 / max(1, len(names))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes.flat, metrics):
        for i, n in enumerate(names):
            if n == "ceiling" and key not in ("qps", "p50_ms", "p99_ms"):
                continue  # its CPU and memory are the upstream's, not a forwarder's
            vals = []
            for w in workloads:
                r = next((r for r in rows if r["forwarder"] == n and r["workload"] == w), None)
                v = r.get(key) if r else None
                if v is not None and key == "rss_after_kib":
                    v = v / 1024
                vals.append(v if v is not None else 0)
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(workloads))]
            color = "black" if n == "dns-proxy" else colors[i % len(colors)]
            ax.bar(xs, vals, width, label=n, color=color if n != "ceiling" else "lightgrey",
                   edgecolor="black" if n == "ceiling" else None)
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(workloads, fontsize=8 if len(workloads) > 3 else None)
        ax.set_title(title)
        if key in ("p99_ms", "p50_ms"):
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    if summary:
        light_names = []
        for r in summary:
            if r["forwarder"] not in light_names:
                light_names.append(r["forwarder"])
        lw = 0.8 / max(1, len(light_names))
        kinds = list((doc.get("light") or {}).get("upstreams", {}))
        for ax, kind in zip(axes[2][:2], kinds):
            for i, n in enumerate(light_names):
                vals = []
                for rate in LIGHT_RATES:
                    r = next((r for r in summary if r["forwarder"] == n and r["upstream"] == kind
                              and r["rate"] == rate), None)
                    vals.append(r["p50_ms_median"] if r and r["p50_ms_median"] is not None else 0)
                xs = [j + (i - (len(light_names) - 1) / 2) * lw for j in range(len(LIGHT_RATES))]
                color = "black" if n == "dns-proxy" else colors[names.index(n) % len(colors)] if n in names else colors[i % len(colors)]
                ax.bar(xs, vals, lw, label=n, color=color if n != "ceiling" else "lightgrey",
                       edgecolor="black" if n == "ceiling" else None)
            ax.set_xticks(range(len(LIGHT_RATES)))
            ax.set_xticklabels([f"{r} q/s" for r in LIGHT_RATES])
            ax.set_yscale("log")
            ax.set_title(f"light load p50, ms — {doc['light']['upstreams'][kind]}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        axes[2][0].legend(fontsize=8)
        ax = axes[2][2]
        fwd_names = [n for n in light_names if n != "ceiling"]
        kw = 0.8 / max(1, len(kinds))
        for k, kind in enumerate(kinds):
            vals = []
            for n in fwd_names:
                rs = [r["first_query_ms_median"] for r in summary if r["forwarder"] == n
                      and r["upstream"] == kind and r.get("first_query_ms_median") is not None]
                vals.append(median(rs) or 0)
            xs = [j + (k - (len(kinds) - 1) / 2) * kw for j in range(len(fwd_names))]
            ax.bar(xs, vals, kw, label=doc["light"]["upstreams"][kind])
        ax.set_xticks(range(len(fwd_names)))
        ax.set_xticklabels(fwd_names, fontsize=8)
        ax.set_yscale("log")
        ax.set_title("first query after start, ms (median)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    m = doc["machine"]
    s = doc["settings"]
    fig.suptitle(f"dns-proxy vs DoT forwarders{' — clients over DoT/DoH' if s.get('encrypted_only') else ''} — {doc['date']} — {m['nproc']} CPUs, {m['cpu_model']} — "
                 f"{s['duration_s']:g} s/workload{' (quick)' if s['quick'] else ''}, paced {s['paced_rate_qps']} q/s",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)
