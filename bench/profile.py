#!/usr/bin/env python3
"""Where the time goes: py-spy on our server while wrk loads GET /api/v1/vms?limit=100.

    .venv/bin/python bench/profile.py                    # default scenario
    .venv/bin/python bench/profile.py --vms 100000       # a generated 100,000-VM scenario
    .venv/bin/python bench/profile.py --analyse bench/results/profile-raw.txt   # re-read only

Serves ``cockpit-api serve`` (default settings) on a free loopback port,
pinned to the first CPU; wrk (-t2 -c32, pinned to the second) runs for the
warm-up plus the two recordings; py-spy records the server's Python stacks
(``--format raw``: collapsed stacks; then a flame graph SVG), only the thread
holding the GIL (``--gil``). Idle samples (the event loop waiting in epoll, idle
thread-pool workers) are not recorded, so percentages are of the server's busy
CPU time.

Each sample is attributed to the innermost *layer* on its stack (rules below):
a frame in a neutral helper (inspect, functools, copy, re, urllib, starlette's
datastructures...) counts for the layer that called it. Writes
bench/results/profile[-SUFFIX].{md,json}, profile[-SUFFIX]-raw.txt and profile[-SUFFIX].svg.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # bench/harness.py: servers, pinning, wrk

# Innermost matching frame wins. Frames matching nothing are neutral helpers.
LAYERS: list[tuple[str, str]] = [
    ("uvicorn + httptools: HTTP parsing, socket writes", r"uvicorn/|httptools"),
    ("event loop (uvloop, asyncio)", r"asyncio/|uvloop"),
    ("CockpitApp wrapper (cockpit_api/app.py)", r"cockpit_api/app\.py"),
    ("middleware plumbing: ServerError, CORS, exceptions, lifespan, context",
     r"connexion/middleware/(main|server_error|exceptions|lifespan|abstract|context)\.py"
     r"|connexion/apps/abstract\.py|starlette/middleware/|starlette/_exception_handler\.py"),
    ("compiled pipeline: route table, argument plan, glue (cockpit_api/http/pipeline.py, "
     "connexion_parts.py)", r"cockpit_api/http/(pipeline|connexion_parts)\.py"),
    ("routing: Swagger UI router, RoutingMiddleware, starlette Router",
     r"connexion/middleware/(swagger_ui|routing)\.py|starlette/routing\.py"),
    ("security: Connexion's check (security.py)", r"connexion/(middleware/)?security\.py"),
    ("security: our bearer_info (state.py), the auth service + pyjwt",
     r"cockpit_api/(state|auth/service)\.py|\bjwt/"),
    ("request validation: Connexion validators + jsonschema",
     r"connexion/validators/|connexion/middleware/(request|response)_validation\.py|jsonschema"
     r"|referencing/|rpds|attr/_make"),
    ("Connexion request object + parameter parsing (lifecycle, uri_parsing, starlette Request)",
     r"connexion/(lifecycle|uri_parsing|context\.py)|starlette/requests\.py|werkzeug/"),
    ("Connexion handler invocation: decorators, response conversion",
     r"connexion/(decorators/|apps/asynchronous|frameworks/)"),
    ("our handler + backend (handlers/, backends/)", r"handlers/|backends/"),
    ("JSON serialisation (json.dumps in cockpit_api.handlers._common.ok)", r"json/"),
    ("starlette Response object", r"starlette/responses\.py"),
]
_COMPILED = [(name, re.compile(rx)) for name, rx in LAYERS]

# Cross-cutting costs worth naming (inclusive: % of samples with such a frame on the stack).
WATCH: list[tuple[str, str]] = [
    ("inspect.signature (Connexion re-inspects functions per request)",
     r"^signature \(inspect\.py\)|^Signature\.from_callable"),
    ("functools.update_wrapper (per-request decoration)", r"^update_wrapper \(functools"),
    ("copy.deepcopy (parameter schemas, headers)", r"^deepcopy \(copy\.py\)"),
    ("jsonschema validator construction", r"Validator\.__attrs_post_init__|^__init__ \(<attrs"),
    ("jsonschema validate()", r"create\.<locals>\.Validator\.(validate|iter_errors)"),
    ("compiled pipeline: one operation (Pipeline.__call__, inclusive)",
     r"^Pipeline\.__call__ \(cockpit_api/pipeline\.py\)"),
    ("argument plan (ArgumentPlan.__call__)", r"^ArgumentPlan\.__call__"),
    ("ConnexionRequest + starlette Request construction", r"^(ConnexionRequest|Request)\.__init__"),
    ("query string parsing (QueryParams + URI parser)",
     r"^QueryParams\.__init__|^OpenAPIURIParser\.resolve_query|^AbstractURIParser\.resolve_query"),
    ("cockpit_api.handlers.vms.list_vms", r"^list_vms \(handlers/vms\.py\)"),
    ("backend.list_vms (settle + page)", r"list_vms \(backends/"),
    ("cockpit_api.handlers._common.ok (json.dumps + Response)", r"^ok \(handlers/_common\.py\)"),
    ("json.dumps", r"^dumps \(json/"),
    ("pyjwt decode", r"\(jwt/"),
    ("AuthService.verify (token cache hit)", r"^AuthService\.verify"),
    ("uvicorn RequestResponseCycle.send (socket write)", r"^RequestResponseCycle\.send"),
]


def _clean(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def analyse(raw: Path) -> dict[str, Any]:
    layers: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    watch: collections.Counter[str] = collections.Counter()
    total = 0
    watch_rx = [(name, re.compile(rx)) for name, rx in WATCH]
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_clean(f) for f in stack.split(";")]
        leaf[frames[-1]] += n
        layer = "other"
        for frame in reversed(frames):
            hit = next((name for name, rx in _COMPILED if rx.search(frame)), None)
            if hit:
                layer = hit
                break
        layers[layer] += n
        for name, rx in watch_rx:
            if any(rx.search(f) for f in frames):
                watch[name] += n

    def pct(n: int) -> float:
        return round(100 * n / total, 1) if total else 0.0

    return {
        "samples": total,
        "layers": [{"layer": k, "pct": pct(v)} for k, v in layers.most_common()],
        "watch": [{"what": name, "pct": pct(watch[name])} for name, _ in WATCH],
        "top_self": [{"frame": k, "pct": pct(v)} for k, v in leaf.most_common(25)],
    }


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"## Profile: {meta['what']}", "",
             f"py-spy {meta.get('py_spy')}, {result['samples']} samples at {meta['rate']} Hz "
             f"over {meta['duration']} s; {meta.get('rps', '?')} req/s under wrk "
             f"-t2 -c32 during the recording; {meta.get('pinning')}.", "",
             "### By layer (innermost layer on the stack; % of busy CPU samples)", "",
             "| layer | % |", "|---|---:|"]
    lines += [f"| {x['layer']} | {x['pct']} |" for x in result["layers"]]
    lines += ["", "### Cross-cutting (inclusive: % of samples with the frame on the stack)", "",
              "| what | % |", "|---|---:|"]
    lines += [f"| {x['what']} | {x['pct']} |" for x in result["watch"]]
    lines += ["", "### Top frames by self time", "", "| frame | % |", "|---|---:|"]
    lines += [f"| `{x['frame']}` | {x['pct']} |" for x in result["top_self"]]
    return "\n".join(lines) + "\n"


def record(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    pyspy = (args.py_spy or shutil.which("py-spy")
             or str(Path(sys.executable).parent / "py-spy"))
    if not Path(pyspy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.suffix}" if args.suffix else ""
    pin = harness.Pinning.choose(True)
    tmp = Path(tempfile.mkdtemp(prefix="cockpit-profile-"))
    scenario = None
    if args.vms:
        scenario = tmp / f"gen-{args.vms}.yaml"
        scenario.write_text(json.dumps({
            "name": f"bench-{args.vms}", "seed": 1, "users": harness.DEMO_USERS,
            "generate": {"hosts": harness.hosts_for(args.vms), "vms": args.vms}}))
    port = harness.free_port()
    cmd = harness.cockpit_cmd(port, pin, str(scenario) if scenario else None)
    env = None
    if args.patches:
        # bench/variants.py: the same CLI with runtime patches (what a change would do).
        serve = cmd[cmd.index("serve"):]
        cmd = [*pin.server, sys.executable, str(harness.BENCH / "variants.py"), "--serve",
               args.patches, "--", *serve[1:]]
        if args.pydeps:
            env = {"PYTHONPATH": args.pydeps}
    server = harness.Server("profiled", cmd, port, tmp, env=env).start()
    raw = out / f"profile{suffix}-raw.txt"
    svg = out / f"profile{suffix}.svg"
    meta: dict[str, Any] = {"rate": args.rate, "duration": args.duration,
                            "commit": harness._commit(), "started": time.strftime("%FT%TZ",
                                                                                  time.gmtime()),
                            "pinning": pin.describe(), "py_spy": harness._first_line(
                                [pyspy, "--version"])}
    try:
        server.wait_ready(f"{harness.PREFIX}/openapi.json", timeout=300)
        token = harness.login(server.base)
        url = server.base + (args.path or harness.LIST_100)
        meta["what"] = (f"GET {args.path or harness.LIST_100}, "
                        f"{args.vms or 'default scenario (14)'} VMs"
                        + (f", patches {args.patches}" if args.patches else ""))
        total = args.warmup + 2 * args.duration + 4
        wrk = subprocess.Popen(
            [*pin.client, "wrk", "-t2", "-c32", f"-d{total}s", "--latency",
             "-H", f"Authorization: Bearer {token}", url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(args.warmup)
            for fmt, path in (("raw", raw), ("flamegraph", svg)):
                subprocess.run([*pin.client, pyspy, "record", "--pid", str(server.pid),
                                "--rate", str(args.rate), "--duration", str(args.duration),
                                # only the thread holding the GIL: the idle thread-pool
                                # workers (scrypt runs there) would count as busy otherwise
                                "--gil",
                                "--format", fmt, "-o", str(path)],
                               check=True, timeout=args.duration + 60,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stdout, _ = wrk.communicate(timeout=total + 30)
        finally:
            if wrk.poll() is None:
                wrk.terminate()
                wrk.wait(10)
        m = re.search(r"Requests/sec:\s+([\d.]+)", stdout or "")
        meta["rps"] = f"{float(m.group(1)):,.0f}" if m else "?"
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", stdout or "")
        if non2xx:
            raise SystemExit(f"profile run saw {non2xx.group(1)} non-2xx answers")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return raw, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=0, help="generated scenario size (0: default)")
    parser.add_argument("--path", default=None, help="path and query (default /vms?limit=100)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--duration", type=int, default=15, help="seconds per recording")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--suffix", default="", help="file name suffix, e.g. 100k")
    parser.add_argument("--results-dir", default=str(harness.BENCH / "results"))
    parser.add_argument("--analyse", default=None, help="only analyse this raw file")
    parser.add_argument("--patches", default="",
                        help="bench/variants.py patches to apply first, e.g. connexion-stack")
    parser.add_argument("--pydeps", default=None, help="extra PYTHONPATH for --patches")
    parser.add_argument("--py-spy", default=None,
                        help="the py-spy binary (default: on PATH or next to python)")
    args = parser.parse_args()
    if args.analyse:
        raw, meta = Path(args.analyse), {"what": args.analyse, "rate": args.rate,
                                         "duration": args.duration}
    else:
        raw, meta = record(args)
    result = analyse(raw)
    md = markdown(result, meta)
    print(md)
    if not args.analyse:
        suffix = f"-{args.suffix}" if args.suffix else ""
        out = Path(args.results_dir)
        (out / f"profile{suffix}.md").write_text(md)
        (out / f"profile{suffix}.json").write_text(json.dumps({**meta, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
