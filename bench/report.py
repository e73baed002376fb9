"""The benchmark's report: its targets, pass or fail, and the results as Markdown
(bench/results/*.md). bench/run.py runs the phases and writes what this renders."""

from __future__ import annotations

from typing import Any


def all_ok(results: dict[str, Any]) -> bool:
    sections: list[dict[str, Any]] = list(results.get("comparison", {}).values())
    sections += results.get("curves", [])
    sections += [results[k] for k in ("login",) if k in results]
    sections += [x for table in results.get("operations", {}).values() for x in table.values()]
    return all(s.get("ok", True) for s in sections)


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cmp_ = r.get("comparison", {})
    ours = cmp_.get("ours")
    prism = cmp_.get("prism")
    ceiling = cmp_.get("ceiling")

    def add(name: str, value: float | None, goal: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "value": None if value is None else round(value, 3),
                    "goal": goal, "met": met, "detail": detail})

    if ours and prism:
        ratio = ours["rps"] / prism["rps"]
        add("GET /vms req/s vs Prism", ratio, ">= 2.0x", ratio >= 2.0,
            f"{ours['rps']:,.0f} vs {prism['rps']:,.0f} req/s")
        if ours.get("req_per_cpu_s") and prism.get("req_per_cpu_s"):
            ratio = ours["req_per_cpu_s"] / prism["req_per_cpu_s"]
            add("GET /vms per core (req/CPU-s) vs Prism", ratio, ">= 2.0x", ratio >= 2.0,
                f"{ours['req_per_cpu_s']:,.0f} vs {prism['req_per_cpu_s']:,.0f} req/CPU-s")
        ratio = ours["p99_ms"] / prism["p99_ms"]
        add("GET /vms p99 vs Prism", ratio, "< 1.0x", ratio < 1.0,
            f"{ours['p99_ms']:.2f} vs {prism['p99_ms']:.2f} ms")
    else:
        add("GET /vms req/s vs Prism", None, ">= 2.0x", None, "Prism not run")
        add("GET /vms p99 vs Prism", None, "< 1.0x", None, "Prism not run")
    if ours and ceiling:
        ratio = ours["rps"] / ceiling["rps"]
        add("(info) GET /vms req/s vs the ceiling", ratio, "", None,
            f"{ours['rps']:,.0f} vs {ceiling['rps']:,.0f} req/s")
    stack = cmp_.get("ours, Connexion's stack")
    if ours and stack:
        ratio = ours["rps"] / stack["rps"]
        add("GET /vms req/s vs Connexion's stack", ratio, "> 1.0x", ratio > 1.0,
            f"{ours['rps']:,.0f} vs {stack['rps']:,.0f} req/s")
    for workload, table in r.get("operations", {}).items():
        a, b = table.get("ours"), table.get("ours, Connexion's stack")
        if a and b:
            ratio = a["rps"] / b["rps"]
            add(f"{workload} req/s vs Connexion's stack", ratio, "> 1.0x", ratio > 1.0,
                f"{a['rps']:,.0f} vs {b['rps']:,.0f} req/s; p99 {a['p99_ms']:.2f} vs "
                f"{b['p99_ms']:.2f} ms")
    curve = {(c["vms"], c["endpoint"]): c for c in r.get("curves", [])}
    small, big = min(r["settings"]["sizes"]), max(r["settings"]["sizes"])
    a, b = curve.get((small, "list limit=100")), curve.get((big, "list limit=100"))
    if a and b:
        ratio = a["rps"] / b["rps"]
        add(f"page of 100 at {big:,} VMs vs {small} VMs", ratio, "<= 1.5x", ratio <= 1.5,
            f"{b['rps']:,.0f} vs {a['rps']:,.0f} req/s; p50 {b['p50_ms']:.2f} vs "
            f"{a['p50_ms']:.2f} ms")
        if a.get("req_per_cpu_s") and b.get("req_per_cpu_s"):
            ratio = a["req_per_cpu_s"] / b["req_per_cpu_s"]
            add("(same, per CPU-second: sizes are measured minutes apart, not interleaved)",
                ratio, "<= 1.5x", ratio <= 1.5,
                f"{b['req_per_cpu_s']:,.0f} vs {a['req_per_cpu_s']:,.0f} req/CPU-s")
    mid = curve.get((1_000, "list limit=100"))
    if mid and b and big != 1_000:
        ratio = mid["rps"] / b["rps"]
        add(f"(info) page of 100 at {big:,} VMs vs 1,000 VMs: same page size, cluster size only",
            ratio, "<= 1.5x", ratio <= 1.5, f"{b['rps']:,.0f} vs {mid['rps']:,.0f} req/s")
        if mid.get("req_per_cpu_s") and b.get("req_per_cpu_s"):
            ratio = mid["req_per_cpu_s"] / b["req_per_cpu_s"]
            add("(info, same, per CPU-second)", ratio, "<= 1.5x", ratio <= 1.5,
                f"{b['req_per_cpu_s']:,.0f} vs {mid['req_per_cpu_s']:,.0f} req/CPU-s")
    st = r.get("startup")
    if st:
        add("start-up, default scenario", st["median_s"], "< 2 s", st["median_s"] < 2.0,
            f"median of {len(st['runs_s'])}, wall time")
        if "cpu_s" in st:
            add("start-up, CPU time of it (what an idle core would take)", st["cpu_s"],
                "< 2 s", st["cpu_s"] < 2.0, "user + system seconds at the first 200")
    return out


def _opt(x: float | None, fmt: str = ".0f") -> str:
    return "" if x is None else format(x, fmt)


def _fmt_rps(x: float) -> str:
    return f"{x:,.0f}"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    v = m["versions"]
    lines = [
        f"## Benchmark results ({r['mode']}, {r['started']})",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_mib']} MiB, "
        f"{m['os']}, kernel {m['kernel']}; Python {m['python']}; load average at start "
        f"{m['loadavg_at_start']}, at end {m.get('loadavg_at_end')}. {r['pinning']}. "
        f"wrk -t{r['settings']['threads']} -c{r['settings']['connections']}. "
        f"connexion {v.get('connexion')}, starlette {v.get('starlette')}, uvicorn "
        f"{v.get('uvicorn')}, uvloop {v.get('uvloop')}, httptools {v.get('httptools')}, "
        f"Prism {v.get('prism')} on node {v.get('node')}. Commit {str(m.get('commit'))[:12]}.",
        "",
    ]
    cmp_ = r.get("comparison")
    if cmp_:
        s = r["settings"]
        ours = cmp_["ours"]
        lines += [
            f"### GET /api/v1/vms?limit=100 with a bearer token (default scenario, "
            f"{s['rounds']} x {s['duration']} s interleaved after {s['warmup']} s warm-up; "
            f"medians)",
            "",
            "| server | req/s (min-max) | p50 ms | p99 ms | server CPU % | req/CPU-s | "
            "bytes/resp | RSS MiB | ours/this req/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, x in cmp_.items():
            ratio = ours["rps"] / x["rps"] if x["rps"] else float("nan")
            bad = "" if x["ok"] else f" **errors {x['errors']}**"
            lines.append(
                f"| {name} | {_fmt_rps(x['rps'])} ({_fmt_rps(x['rps_min'])}-"
                f"{_fmt_rps(x['rps_max'])}){bad} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
                f"{_opt(x['server_cpu_pct'])} | {_opt(x['req_per_cpu_s'], ',.0f')} | "
                f"{x['bytes_per_request']:,.0f} | {x.get('rss_mib', '')} | {ratio:.2f} |")
        lines.append("")
    if r.get("curves"):
        s = r["settings"]
        lines += [
            f"### Our mock as the cluster grows ({s['curve_rounds']} x {s['curve_duration']} s "
            f"per endpoint, interleaved; scenarios swapped through POST /_sim/scenario)",
            "",
            "| VMs | hosts | request | req/s | p50 ms | p99 ms | server CPU % | req/CPU-s | "
            "bytes/resp | RSS MiB |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in r["curves"]:
            bad = "" if c["ok"] else f" **errors {c['errors']}**"
            lines.append(
                f"| {c['vms']:,} | {c['hosts']} | {c['endpoint']} | {_fmt_rps(c['rps'])}{bad} | "
                f"{c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {_opt(c['server_cpu_pct'])} | "
                f"{_opt(c['req_per_cpu_s'], ',.0f')} | {c['bytes_per_request']:,.0f} | "
                f"{c['rss_mib']} |")
        lines.append("")
    if r.get("operations"):
        s = r["settings"]
        lines += [
            f"### One resource at a time: ours vs the same server on Connexion's own stack "
            f"({s['action_rounds']} x {s['action_duration']} s interleaved, default scenario)",
            "",
            "| workload | server | req/s | p50 ms | p99 ms | server CPU % | req/CPU-s | "
            "compiled/stack req/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for workload, table in r["operations"].items():
            base = table.get("ours, Connexion's stack")
            for name, x in table.items():
                ratio = (f"{x['rps'] / base['rps']:.2f}" if base and name == "ours"
                         and base["rps"] else "")
                bad = "" if x["ok"] else f" **errors {x['errors']}**"
                lines.append(
                    f"| {workload} | {name} | {_fmt_rps(x['rps'])}{bad} | {x['p50_ms']:.2f} | "
                    f"{x['p99_ms']:.2f} | {_opt(x['server_cpu_pct'])} | "
                    f"{_opt(x['req_per_cpu_s'], ',.0f')} | {ratio} |")
        lines += ["", "GET /vms/{id} cycles over the 14 VMs; action + GET is suspend, GET, "
                  "resume, GET on two running VMs; migrate + poll starts a migration per wrk "
                  "thread, polls it until it ends, then migrates the VM back (connections "
                  "waiting for the POST read the VM).", ""]
    other = []
    if "login" in r:
        a = r["login"]
        other.append(f"| POST /auth/login (scrypt n=2^14 per login, by design) | "
                     f"{a['rps']:,.1f} req/s; p50 {a['p50_ms']:.0f} ms, p99 {a['p99_ms']:.0f} ms |")
    if "startup" in r:
        a = r["startup"]
        other.append(f"| start-up, default scenario (process start to first 200 on "
                     f"/api/v1/openapi.json) | median {a['median_s']:.2f} s of "
                     f"{len(a['runs_s'])} ({', '.join(f'{t:.2f}' for t in a['runs_s'])}), "
                     f"of which CPU {a.get('cpu_s', 0):.2f} s; RSS {a['rss_mib_default']} MiB |")
    if "memory" in r:
        a = r["memory"]
        other.append(f"| memory at {a['vms']:,} VMs / {a['hosts']} hosts (fresh process) | "
                     f"RSS {a['rss_mib_idle']} MiB ready, {a['rss_mib_after_load']} MiB after "
                     f"load, peak {a['hwm_mib']} MiB; ready in {a['startup_s']:.2f} s |")
    if other:
        lines += ["### Other measurements", "", "| what | result |", "|---|---|", *other, ""]
    if r.get("targets"):
        lines += ["### Targets", "", "| target | goal | measured | met | detail |",
                  "|---|---|---:|---|---|"]
        for t in r["targets"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            val = "" if t["value"] is None else f"{t['value']:.2f}"
            lines.append(f"| {t['target']} | {t['goal']} | {val} | {met} | {t['detail']} |")
        lines.append("")
    if r["mode"] == "quick":
        lines.append("_Quick mode: one short round each; indicative only._\n")
    return "\n".join(lines)
