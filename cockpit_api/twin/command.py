"""``cockpit-api twin``: the command (the run, its report, the CLI); the worlds are
worlds.py, the state machine machine.py."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx

from cockpit_api.conformance.runner import UsageError, api_root, given_password
from cockpit_api.twin.worlds import (
    Api,
    CannotStart,
    Deployment,
    EmbeddedTwin,
    Json,
    KnownDifferences,
    Options,
    Pacer,
    ServedTwin,
    World,
    snapshot_of,
)


def canaries(vms: list[Json], ids: list[str], pattern: str | None) -> list[str]:
    chosen = [v["id"] for v in vms if v["id"] in ids]
    missing = sorted(set(ids) - set(chosen))
    if missing:
        raise CannotStart(f"no such VM on the deployment: {', '.join(missing)}")
    if pattern:
        rx = re.compile(pattern)
        chosen += [v["id"] for v in vms if rx.search(v["name"])]
    return sorted(set(chosen))


def run(args: argparse.Namespace) -> int:
    import logging

    # Here, not at the top: the state machine needs Hypothesis (the test extra), and the
    # CLI that imports this module must serve without it (tests/test_wheel.py).
    from cockpit_api.twin import machine as twin_machine

    # One line per request (httpx) or per start of the embedded twin's app: noise here.
    for noisy in ("httpx", "alembic", "connexion", "cockpit_api.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    api = api_root(args.base_url)
    deadline = time.monotonic() + args.max_time if args.max_time else None
    http = httpx.Client(timeout=60)
    deployment = Deployment(Api(http, api, args.username, args.password,
                                Pacer(args.max_rate or None, deadline)), args.deployment_speed)
    try:
        known = KnownDifferences.load(args.known_differences)
        try:
            deployment.api.login()
        except httpx.HTTPError as exc:
            raise CannotStart(f"cannot reach {api}: {exc}") from None
        first = snapshot_of(deployment.api)
        vms = first["vms"]
        chosen = canaries(vms, args.vm, args.vm_pattern)
        if not chosen:
            raise CannotStart("name the canary VMs the twin may write: --vm ID or "
                              "--vm-pattern REGEX (matching at least one VM name)")
    except CannotStart as exc:
        print(f"twin: {exc}", file=sys.stderr)
        http.close()
        return 2
    names = {v["id"]: v["name"] for v in vms}
    print(f"twin: deployment {api}; canaries (the only VMs written): "
          + ", ".join(f"{names[c]} ({c})" for c in chosen), flush=True)

    twins: list[World] = []

    def make_twin(scenario: Json) -> World:
        """A twin holding ``scenario``: a new sandbox each example, or the embedded one."""
        if args.mock_url:
            for old in twins:
                old.close()
            twins[:] = [ServedTwin(args.mock_url, args.mock_username, args.mock_password,
                                   scenario)]
        elif twins:
            assert isinstance(twins[0], EmbeddedTwin)
            twins[0].reload(scenario)
        else:
            twins.append(EmbeddedTwin(scenario))
        return twins[0]

    opts = Options(steps=args.steps, seed=args.seed, band=args.time_band,
                   slack=args.time_slack, max_time=args.max_time, known=known)
    result = twin_machine.Result()
    interrupted = False
    try:
        twin_machine.check(deployment, make_twin, chosen, opts, result, first)
    except KeyboardInterrupt:
        interrupted = True
        print("\ntwin: interrupted: letting the canaries settle", file=sys.stderr, flush=True)
    except CannotStart as exc:
        print(f"twin: {exc}", file=sys.stderr)
        http.close()
        return 2
    finally:
        for t in twins:
            t.close()
        left = twin_machine.leave_settled(deployment, chosen, result)
        http.close()
    text = report(result, api, names, left)
    print(text, flush=True)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    if args.junit:
        write_junit(args.junit, result)
    if interrupted:
        return 1
    return 1 if result.failure is not None else 0


def report(result: Any, api: str, names: dict[str, str], left: dict[str, str]) -> str:
    """The run as markdown: verdict, divergences and their reproduction, time ratios."""
    lines = [f"# cockpit-api twin: {api}", ""]
    lines.append(f"- steps run: {result.steps} (over {result.examples} example(s)); "
                 f"requests to the deployment: {result.requests} (session renewed after a "
                 f"401: {result.renewals} time(s))")
    if result.failure is None:
        lines.append("- **no divergence**" + (
            f" ({len(result.known)} known difference(s) seen)" if result.known else ""))
    else:
        lines.append(f"- **DIVERGED** at step {result.failure.index + 1} of the shrunk "
                     f"sequence ({len(result.failure.steps)} step(s))")
    if result.stopped:
        lines.append(f"- stopped early: {result.stopped}")
    if result.failure is not None:
        f = result.failure
        lines += ["", "## Divergences", "", "| step | what | deployment | twin |",
                  "|---|---|---|---|"]
        for d in f.divergences:
            lines.append(f"| {d.step} | {d.what} | `{d.real}` | `{d.twin}` |")
        lines += ["", "## Reproduction (shrunk)", "", "Each step as the twin sent it, on the "
                  "deployment's state at the start of the run:", ""]
        lines += [f"{i + 1}. {s}" for i, s in enumerate(f.steps)]
    if result.known:
        lines += ["", "## Known differences seen", "", "| id | step | what | reason |",
                  "|---|---|---|---|"]
        for k, d in result.known[:50]:
            lines.append(f"| {k.id} | {d.step} | {d.what} | {k.reason} |")
    lines += ["", "## Time: real (wall) vs twin (virtual) seconds per kind of step", "",
              "| kind | steps | real mean s | twin mean s | real/twin (min - max) |",
              "|---|---:|---:|---:|---|"]
    for kind, pairs in sorted(result.times.items()):
        real = sum(p[0] for p in pairs) / len(pairs)
        twin = sum(p[1] for p in pairs) / len(pairs)
        ratios = [p[0] / p[1] for p in pairs if p[1] > 0.05]
        span = f"{min(ratios):.2f} - {max(ratios):.2f}" if ratios else "twin instant"
        lines.append(f"| {kind} | {len(pairs)} | {real:.3f} | {twin:.3f} | {span} |")
    if left:
        lines += ["", "## Canaries left in", ""]
        lines += [f"- {names.get(vm, vm)} ({vm}): {state}" for vm, state in left.items()]
    return "\n".join(lines) + "\n"


def write_junit(path: Path, result: Any) -> None:
    suite = ET.Element("testsuite", name="cockpit-api twin", tests=str(max(1, result.steps)),
                       failures="1" if result.failure is not None else "0")
    case = ET.SubElement(suite, "testcase", classname="twin", name="deployment matches twin")
    if result.failure is not None:
        f = result.failure
        message = "; ".join(f"{d.step}: {d.what}: deployment {d.real!r} != twin {d.twin!r}"
                            for d in f.divergences)
        node = ET.SubElement(case, "failure", message=message[:2000])
        node.text = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(f.steps))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("twin", help="prove the mock against a deployment, step by step",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="the deployment, e.g. https://cockpit:8080")
    p.add_argument("--username", required=True)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin (else COCKPIT_PASSWORD)")
    p.add_argument("--vm", action="append", default=[], metavar="ID",
                   help="a canary VM the twin may write (repeatable)")
    p.add_argument("--vm-pattern", metavar="REGEX", help="canaries: VMs whose name matches")
    p.add_argument("--steps", type=int, default=50, help="steps of the state machine")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-rate", type=float, default=5.0,
                   help="requests per second to the deployment (0: no limit)")
    p.add_argument("--max-time", type=float, default=1800.0,
                   help="seconds the whole run may take, shrinking included")
    p.add_argument("--time-band", type=float, default=0.5,
                   help="real times must be within twin x (1 +- band) + slack (default 0.5)")
    p.add_argument("--time-slack", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--known-differences", type=Path, default=None, metavar="YAML",
                   help="explained differences and guest models (see "
                        "docs/twin-known-differences.yaml)")
    p.add_argument("--deployment-speed", type=float, default=1.0,
                   help="the deployment's clock speed: a served mock's --speed (default 1)")
    p.add_argument("--junit", type=Path, default=None)
    p.add_argument("--report", type=Path, default=None, help="write the markdown report here")
    p.add_argument("--mock-url", default=None,
                   help="a served mock to hold the twin in a sandbox (default: embedded)")
    p.add_argument("--mock-username", default="admin")
    p.add_argument("--mock-password", default=os.environ.get("COCKPIT_MOCK_PASSWORD", "admin"))
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    args.password = given_password(args)
    if not args.password:
        raise UsageError("give the password on stdin (--password-stdin) or in COCKPIT_PASSWORD")
    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    return run(args)
