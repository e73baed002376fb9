#!/usr/bin/env python3
"""What a change would gain, measured before anyone makes it.

    .venv/bin/python bench/variants.py                         # every variant, GET /vms?limit=100
    .venv/bin/python bench/variants.py --vms 100000            # on a generated 100,000-VM scenario
    .venv/bin/python bench/variants.py --workload action       # the suspend/resume + GET mix
    .venv/bin/python bench/variants.py --variants baseline,signatures --rounds 5

Each variant is ``cockpit-api serve`` (default settings, the real CLI) in its
own process with runtime patches applied *in that process only*: nothing in
the repository changes. The patches stand for changes recommended in
bench/README.md; the real change would live in the file named in each
docstring. All variants are served at once (pinned to the first CPU; idle
ones cost nothing), warmed up, then loaded by wrk in interleaved rounds, so a
noisy neighbour hurts every variant alike.

Every patch keeps the contract: strict request validation and security still run
on every request, answers are the same JSON (checked before the load starts).
``connexion-stack`` is the reference for the compiled pipeline: the same server
with every request through Connexion's own per-request stack.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import gc
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


# ---------------------------------------------------------------- patches
# Each takes no argument and patches the current process before the app is built.


def p_connexion_stack() -> None:
    """Not a change: the server as it was before the compiled pipeline
    (cockpit_api/http/pipeline.py),
    every request through Connexion's own per-request middleware stack. The reference the
    pipeline's gains are measured against (``compiled_pipeline = false`` in a config file does
    the same)."""
    from cockpit_api import app as app_module

    create = app_module.create_app

    def create_app(settings: Any = None, **kwargs: Any) -> Any:
        from cockpit_api.config import Settings

        settings = settings or Settings()
        settings.compiled_pipeline = False
        return create(settings, **kwargs)

    app_module.create_app = create_app  # type: ignore[assignment]


def p_page_cache() -> None:
    """backends/inventory.py + handlers/vms.py: cache the serialised page until the inventory
    changes.

    The inventory gets a generation counter bumped by every write (put_vm, remove_vm,
    set_host_status, bump, put_host, bulk_index); list_vms settles the simulator
    first (as now), then answers the stored bytes for (generation, query) when
    nothing changed since. Only the body is cached: routing, security and strict
    validation still run on every request.
    """
    from starlette.responses import Response

    from cockpit_api.backends import inventory
    from cockpit_api.handlers import _common, vms

    generation = [0]  # one counter for every inventory: a new scenario never reuses a value

    def bumping(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            generation[0] += 1
            return original(*args, **kwargs)
        return wrapper

    for name in ("put_vm", "remove_vm", "set_host_status", "bump", "put_host", "bulk_index"):
        setattr(inventory.Inventory, name, bumping(getattr(inventory.Inventory, name)))

    original_list = vms.list_vms
    cache: dict[tuple[Any, ...], bytes] = {}

    async def list_vms(limit: int = 100, cursor: str | None = None, host_id: str | None = None,
                       status: str | None = None) -> Response:
        be = _common.backend()
        settle = getattr(be, "_settle", None)
        inv = getattr(getattr(be, "_s", None), "inv", None)
        if settle is None or inv is None:
            return await original_list(limit, cursor, host_id, status)
        settle()
        key = (generation[0], limit, cursor, host_id, status)
        body = cache.get(key)
        if body is None:
            response = await original_list(limit, cursor, host_id, status)
            if response.status_code != 200:
                return response
            if len(cache) > 4096:
                cache.clear()
            body = cache[key] = bytes(response.body)
        return Response(body, 200, media_type="application/json")

    vms.list_vms = list_vms


def p_asyncio_h11() -> None:
    """Not a change: what serving costs if uvloop/httptools were missing (uvicorn's
    fallback to asyncio + h11 is silent). Argues for pinning them in cli._serve."""
    import uvicorn

    run = uvicorn.run

    def fallback_run(*args: Any, **kwargs: Any) -> Any:
        return run(*args, **{**kwargs, "loop": "asyncio", "http": "h11"})

    uvicorn.run = fallback_run


def p_gc_stats() -> None:
    """Not a change: record every garbage collection's pause (written at exit)."""
    out = os.environ.get("BENCH_GC_STATS")
    if not out:
        return
    import uvicorn

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0]
    serving = [False]  # count only the collections while serving, not the start-up's

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif serving[0]:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    run = uvicorn.run

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        serving[0] = True
        return run(*args, **kwargs)

    uvicorn.run = counting_run

    def dump() -> None:
        Path(out).write_text(json.dumps({str(g): p for g, p in pauses.items()}))

    atexit.register(dump)
    # uvicorn restores this handler after its graceful shutdown and re-raises SIGTERM;
    # exiting through SystemExit (not the default handler) lets atexit write the file.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


PATCHES: dict[str, Callable[[], None]] = {
    "connexion-stack": p_connexion_stack,
    "page-cache": p_page_cache,
    "gc-stats": p_gc_stats,
    "asyncio-h11": p_asyncio_h11,
}
# Variants: name -> (patches, extra `cockpit-api serve` arguments). The patches of earlier
# rounds (signatures, validator-cache, inventory-tail, orjson, gc-freeze, decorate-once) are
# in the code now, or made moot by the compiled pipeline; they were retired with it.
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "baseline": ([], []),
    "connexion-stack": (["connexion-stack"], []),
    "page-cache": (["page-cache"], []),
    "log-warning": ([], ["--log-level", "warning"]),
    "asyncio-h11": (["asyncio-h11"], []),
}


def serve(patches: list[str], cli_args: list[str]) -> int:
    """The child process: patch, then run the real CLI."""
    for name in patches:
        PATCHES[name]()
    from cockpit_api.cli import main

    return main(["serve", *cli_args])


# ---------------------------------------------------------------- driver


def drive(args: argparse.Namespace) -> int:
    import harness
    import report
    import run

    names = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    plan = run.Plan.make(args.quick)
    plan.rounds = args.rounds or plan.rounds
    plan.duration = args.duration or plan.duration
    pin = harness.Pinning.choose(True)
    tmp = Path(tempfile.mkdtemp(prefix="cockpit-variants-"))
    wrk = harness.Wrk(plan, pin, tmp)
    scenario: str | None = None
    if args.vms:
        path = tmp / f"gen-{args.vms}.yaml"
        path.write_text(json.dumps({
            "name": f"bench-{args.vms}", "seed": 1, "users": harness.DEMO_USERS,
            "generate": {"hosts": harness.hosts_for(args.vms), "vms": args.vms}}))
        scenario = str(path)
    env = {}
    if args.pydeps:
        env["PYTHONPATH"] = os.pathsep.join(
            [args.pydeps, str(harness.ROOT), os.environ.get("PYTHONPATH", "")])
    servers: dict[str, harness.Server] = {}
    gc_files: dict[str, Path] = {}
    try:
        for name in names:
            patches, cli_args = VARIANTS[name]
            patches = ["gc-stats", *patches]
            port = harness.free_port()
            cmd = [*pin.server, sys.executable, str(Path(__file__).resolve()), "--serve",
                   ",".join(patches), "--", "--port", str(port), *cli_args]
            if scenario:
                cmd += ["--scenario", scenario]
            gc_files[name] = tmp / f"gc-{name}.json"
            servers[name] = harness.Server(
                f"variant-{name}", cmd, port, tmp,
                env={**env, "BENCH_GC_STATS": str(gc_files[name])}).start()
        targets: dict[str, harness.Target] = {}
        reference: bytes | None = None
        for name, server in servers.items():
            server.wait_ready(f"{harness.PREFIX}/openapi.json", timeout=300)
            token = harness.login(server.base)
            if args.workload == "action":
                connected = {h["id"] for h in harness.get_json(
                    f"{server.base}{harness.PREFIX}/hosts", token)["hosts"]
                    if h["status"] == "connected"}
                running = harness.get_json(
                    f"{server.base}{harness.PREFIX}/vms?status=running", token)["vms"]
                ids = [v["id"] for v in running if v["host_id"] in connected][:plan.threads]
                targets[name] = harness.Target(server.base, token, "action",
                                               {"BENCH_VM_IDS": ",".join(ids)}, server=server)
            else:
                query = args.path or harness.LIST_100
                status, body = harness.http("GET", server.base + query, token=token)
                assert status == 200, (name, status, body[:200])
                if reference is None:
                    reference = body
                same = json.loads(body) == json.loads(reference)
                print(f"  {name}: pid {server.pid}; same answer as {names[0]}: {same}"
                      f"{'' if body == reference else ' (bytes differ)'}", flush=True)
                if not same:
                    raise SystemExit(f"variant {name} answers differently")
                targets[name] = harness.Target(server.base + query, token, server=server)
        table = harness.interleaved(wrk, targets, plan.warmup, plan.duration, plan.rounds,
                                    lambda m: print(m, flush=True))
    finally:
        for server in servers.values():
            server.stop()
        gc_stats = {name: _gc_summary(path) for name, path in gc_files.items()}
        shutil.rmtree(tmp, ignore_errors=True)
    base = table[names[0]]
    load = "action" if args.workload == "action" else f"GET {args.path or harness.LIST_100}"
    what = f"{load}, {args.vms or 'default scenario'} VMs"
    lines = [f"### Variants: {what} ({plan.rounds} x {plan.duration} s interleaved, medians; "
             f"{pin.describe()})", "",
             f"| variant | req/s | vs {names[0]} | p50 ms | p99 ms | req/CPU-s | gen-2 GCs | "
             f"gen-2 pause max ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in table.items():
        gcs = gc_stats[name]
        row["gc"] = gcs
        lines.append(
            f"| {name} | {row['rps']:,.0f} | {row['rps'] / base['rps']:.2f}x | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{report._opt(row['req_per_cpu_s'], ',.0f')} | {gcs.get('gen2_count', '')} | "
            f"{gcs.get('gen2_max_ms', '')} |")
    md = "\n".join(lines) + "\n"
    print("\n" + md)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"variants-{args.workload}-{args.vms or 'default'}"
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps(
        {"what": what, "machine": harness.machine(), "pinning": pin.describe(),
         "settings": vars(plan), "variants": {n: VARIANTS[n] for n in names}, "results": table},
        indent=2) + "\n")
    return 0 if all(r["ok"] for r in table.values()) else 3


def _gc_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    gen2 = data.get("2", [])
    return {"gen0_count": len(data.get("0", [])), "gen1_count": len(data.get("1", [])),
            "gen2_count": len(gen2),
            "gen2_max_ms": round(1000 * max(gen2), 1) if gen2 else 0,
            "gen2_median_ms": round(1000 * statistics.median(gen2), 1) if gen2 else 0}


def main() -> int:
    if "--serve" in sys.argv:
        i = sys.argv.index("--serve")
        patches = [p for p in sys.argv[i + 1].split(",") if p]
        rest = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
        return serve(patches, rest)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated, first is the reference (default: all: "
                             f"{', '.join(VARIANTS)})")
    parser.add_argument("--workload", choices=["list", "action"], default="list")
    parser.add_argument("--path", default=None, help="GET path and query (default /vms?limit=100)")
    parser.add_argument("--vms", type=int, default=0, help="generated scenario size")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--duration", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pydeps", default=None,
                        help="extra modules for patches (pip install --target DIR ...)")
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    return drive(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
