"""``cockpit-api``: serve the API, hash passwords, check a deployment's conformance."""

from __future__ import annotations

import argparse
import gc
import getpass
import logging
import sys
from collections.abc import Sequence

from cockpit_api.config import ConfigError, Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cockpit_api.app import create_app

    settings = Settings.load(
        args.config, backend=args.backend, scenario=args.scenario, host=args.host,
        port=args.port, speed=args.speed, validate_responses=args.validate_responses or None,
    )
    app = create_app(settings)
    base = f"http://{settings.host}:{settings.port}"
    print(f"Cockpit API ({settings.backend} backend) on {base}/api/v1", flush=True)
    print(f"  Swagger UI {base}/api/v1/ui/   spec {base}/api/v1/openapi.json", flush=True)
    scenario = getattr(app.services.backend, "scenario", None)
    if scenario is not None:
        print(f"  scenario {scenario.name!r}: {len(scenario.hosts)} hosts, {len(scenario.vms)} VMs;"
              f" control plane {base}/_sim/ui/", flush=True)
        users = ", ".join(f"{u.username}/{u.password} ({u.role})" for u in scenario.users)
        print(f"  demo users: {users}", flush=True)
    # Everything built so far (spec, validators, scenario) lives as long as the process:
    # take it out of the collector's reach, or full collections stall requests 30-160 ms.
    from cockpit_api.pipeline import prepare
    prepare(app)  # Connexion's stack and the compiled pipelines, now rather than at start-up
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                access_log=args.access_log, lifespan="on", loop="uvloop", http="httptools")
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    from cockpit_api.auth import hash_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 2
    if not password:
        print("an empty password is not allowed", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cockpit-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API (the simulated cluster by default)")
    serve.add_argument("--backend", choices=["sim", "libvirt"], default=None,
                       help="sim (default) or libvirt")
    serve.add_argument("--scenario", default=None,
                       help="scenario name in scenarios/ or a YAML file (sim backend)")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080)")
    serve.add_argument("--config", default=None, help="TOML config file")
    serve.add_argument("--speed", type=float, default=None,
                       help="virtual seconds per real second for the simulator (default 1)")
    serve.add_argument("--validate-responses", action="store_true",
                       help="check every answer against openapi.yaml (slower)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=_serve)

    hp = sub.add_parser("hash-password", help="print a password hash for [[users]] in the config")
    hp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    hp.set_defaults(func=_hash_password)

    from cockpit_api import conformance

    conformance.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"cockpit-api: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from cockpit_api.conformance import UsageError

        if isinstance(exc, UsageError):
            print(f"cockpit-api: {exc}", file=sys.stderr)
            return 2
        raise
    return code


if __name__ == "__main__":
    raise SystemExit(main())
