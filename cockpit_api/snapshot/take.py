"""``cockpit-api snapshot``: a deployment's state and behaviour, written as a scenario file.

It logs in, reads hosts, every page of VMs, the migration jobs and each running
VM's metrics over a window, then logs out: only GETs of the public API, so it
works against any deployment of openapi.yaml. What it writes is a scenario
(backends/sim/scenario.py) that ``serve --scenario FILE`` and the sandboxes load:
the same hosts and VMs (ids, names, placement, power state), each VM's chart
fitted from its metrics, each host pair's migration speed fitted from the jobs
that completed, and those jobs as history. Same state, same bytes: the body is
sorted and has no wall-clock time in it, and snapshot -> serve -> snapshot is a
fixed point.

``--diff FILE`` compares a deployment with a snapshot instead, lists what
changed and exits 1 when anything did (0 when nothing did).

Exit code: 0 written (or no drift); 1 drift; 2 the snapshot could not be taken
(unreachable, refused, not this API, a page failing): one line on stderr, and no
file (it is written to a temporary file and renamed at the end).

Library use: :func:`take_snapshot` returns the scenario data, :func:`render` turns
it into the file's text; :func:`snapshot_through` takes it through a session the
caller already holds (``cockpit-api twin``: no second login, its pacing).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

from cockpit_api.conformance.runner import given_password
from cockpit_api.snapshot.anonymize import pseudonymize
from cockpit_api.snapshot.read import (
    DEFAULT_METRICS_VMS,
    DEFAULT_WINDOW,
    ApiReader,
    Progress,
    Reader,
    SnapshotError,
    one_line,
    read_state,
)
from cockpit_api.snapshot.render import diff, load_snapshot, render, write_atomically


def parse_window(text: str) -> int:
    """``24h``, ``90m``, ``2d``, ``3600`` (seconds) -> seconds, at least one minute."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window like 24h, 90m or 3600")
    seconds = int(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[m[2]]
    if not 60 <= seconds <= 7 * 86_400:
        raise argparse.ArgumentTypeError("the window is between 1 minute and 7 days")
    return seconds


def take_snapshot(base_url: str, username: str, password: str, *,
                  window: int = DEFAULT_WINDOW, anonymize: bool = False, salt: str | None = None,
                  host_pattern: str | None = None, users: list[dict[str, Any]] | None = None,
                  metrics_vms: int = DEFAULT_METRICS_VMS, fit: bool = True,
                  progress: Progress | None = None) -> dict[str, Any]:
    """The scenario data of a deployment (see :func:`render` for the file).

    ``fit=False`` reads the state only (hosts, VMs, jobs): what ``--diff`` needs.
    ``anonymize`` re-derives names and ids from ``salt`` (same input and salt, same
    pseudonyms; without one, a random salt).
    Raises :class:`SnapshotError` with a one-line reason.
    """
    api = ApiReader(base_url)
    try:
        api.login(username, password)
        try:
            return snapshot_through(api, window=window, anonymize=anonymize, salt=salt,
                                    host_pattern=host_pattern, users=users,
                                    metrics_vms=metrics_vms, fit=fit, progress=progress)
        finally:
            api.logout()
    finally:
        api.close()


def snapshot_through(reader: Reader, *, window: int = DEFAULT_WINDOW, anonymize: bool = False,
                     salt: str | None = None, host_pattern: str | None = None,
                     users: list[dict[str, Any]] | None = None,
                     metrics_vms: int = DEFAULT_METRICS_VMS, fit: bool = True,
                     progress: Progress | None = None) -> dict[str, Any]:
    """:func:`take_snapshot` through a session already open (a :class:`SessionReader`):
    the same data, no login or logout of its own."""
    say = progress or (lambda _msg: None)
    rx = re.compile(host_pattern) if host_pattern else None
    data = read_state(reader, window, rx, metrics_vms if fit else 0, say)
    if users is not None:
        data["users"] = users
    if anonymize:
        data = pseudonymize(data, salt or secrets.token_hex(16))
    return data



# ---------------------------------------------------------------- the command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="write a deployment's state and behaviour as a scenario",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="e.g. https://cockpit.example.org")
    p.add_argument("--username", required=True)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin (else COCKPIT_PASSWORD, else a prompt)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="the scenario file to write (default: stdout)")
    p.add_argument("--window", type=parse_window, default=DEFAULT_WINDOW,
                   help="metrics window the charts are fitted from (default 24h)")
    p.add_argument("--anonymize", action="store_true",
                   help="pseudonyms for host and VM names, ids re-derived from --salt")
    p.add_argument("--salt", default=os.environ.get("COCKPIT_SNAPSHOT_SALT"),
                   help="the anonymizing salt (or COCKPIT_SNAPSHOT_SALT; default: random)")
    p.add_argument("--host-pattern", metavar="REGEX", type=_regex, default=None,
                   help="only hosts whose hostname matches, and their VMs")
    p.add_argument("--users", type=Path, default=None, metavar="FILE",
                   help="a YAML list of {username, password, role} for the scenario")
    p.add_argument("--metrics-vms", type=int, default=DEFAULT_METRICS_VMS, metavar="N",
                   help=f"fit the charts of at most N running VMs (default {DEFAULT_METRICS_VMS};"
                        " 0: none)")
    p.add_argument("--diff", type=Path, default=None, metavar="FILE",
                   help="list what changed since the snapshot FILE instead (exit 1 if anything)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=main)


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {exc}") from None
    return text


def _password(args: argparse.Namespace) -> str:
    given = given_password(args)
    if given is not None:
        return given
    import getpass

    try:
        return getpass.getpass(f"password for {args.username}: ")
    except EOFError:
        raise SnapshotError("no password: use --password-stdin or COCKPIT_PASSWORD") from None


def _users(path: Path | None) -> list[dict[str, Any]] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SnapshotError(f"cannot read the users file {path}: {one_line(exc)}") from None
    if not isinstance(data, list) or not all(
            isinstance(u, dict) and isinstance(u.get("username"), str)
            and isinstance(u.get("password"), str)
            and u.get("role", "viewer") in ("admin", "viewer") for u in data):
        raise SnapshotError(f"{path}: a list of {{username, password, role: admin|viewer}}")
    return [{"username": u["username"], "password": u["password"],
             "role": u.get("role", "viewer")} for u in data]


def main(args: argparse.Namespace) -> int:
    quiet = args.quiet
    # Our own progress lines say what happens; httpx's per-request INFO lines would drown them.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        return _run(args, say)
    except SnapshotError as exc:
        print(f"cockpit-api snapshot: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, say: Progress) -> int:
    password = _password(args)
    users = _users(args.users)
    salt = args.salt
    if args.diff is not None:
        old = load_snapshot(args.diff)
        with args.diff.open(encoding="utf-8") as f:
            head = [f.readline() for _ in range(2)]
        anonymized = head[0].startswith("# cockpit-api snapshot") and "anonymized" in head[1]
        if anonymized and not salt:
            raise SnapshotError(f"{args.diff} is anonymized: give the same --salt")
        new = take_snapshot(args.base_url, args.username, password, anonymize=anonymized,
                            salt=salt, host_pattern=args.host_pattern, fit=False,
                            progress=say)
        lines = diff(old, new)
        for line in lines:
            print(line)
        say(f"snapshot: {len(lines)} change(s) since {args.diff}")
        return 1 if lines else 0
    if args.anonymize and not salt:
        salt = secrets.token_hex(16)
        say("snapshot: a random salt (give --salt to get the same pseudonyms next time)")
    data = take_snapshot(args.base_url, args.username, password, window=args.window,
                         anonymize=args.anonymize, salt=salt, host_pattern=args.host_pattern,
                         users=users, metrics_vms=args.metrics_vms, progress=say)
    text = render(data, source_url=args.base_url, window=args.window, anonymized=args.anonymize)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            write_atomically(text, args.output)
        except OSError as exc:
            raise SnapshotError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        say(f"snapshot: wrote {args.output} ({len(data['hosts'])} hosts, {len(data['vms'])} VMs)")
    return 0
