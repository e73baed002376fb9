"""``cockpit-api``: serve, hash passwords, check (conformance, twin) and snapshot a deployment."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import getpass
import logging
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from cockpit_api.config import ConfigError, Settings
from cockpit_api.ops import logs

banner = logging.getLogger("cockpit_api.serve")


def _serve(args: argparse.Namespace) -> int:
    # Flags are read by the same rows as the file and the environment (config.SETTINGS):
    # their text, not argparse's conversions, so a wrong one is the same one-line message.
    settings = Settings.load(
        args.config,
        flags={name: getattr(args, name) for name in _VALUE_FLAGS},
        validate_responses=args.validate_responses or None,
        access_log=args.access_log or None,
    )
    held = None
    if settings.state_dir is not None:
        from pathlib import Path

        from cockpit_api.store.statedir import lock

        # Held until the process ends: a second server on this directory exits 2 here.
        held = lock(Path(settings.state_dir))
    # Before importing the app: its imports can warn, and warnings are log records too.
    logs.configure(settings.log_format, args.log_level)
    # Connexion says "Adding spec json: ..." once per spec on every start; the banner below
    # names the specs' URLs already.
    logging.getLogger("connexion.middleware.swagger_ui").setLevel(logging.WARNING)
    import uvicorn

    from cockpit_api.app import create_app
    from cockpit_api.http.header_limits import HeadLimits, protocol_with

    app = create_app(settings)
    scheme = "https" if settings.tls_cert else "http"
    base = f"{scheme}://{settings.host}:{settings.port}"
    # In JSON mode the banner is log records too: every line on the output parses.
    say = banner.info if settings.log_format == "json" else functools.partial(print, flush=True)
    say(f"Cockpit API ({settings.backend} backend) on {base}/api/v1")
    say(f"  Dashboard  {base}/dashboard/")
    say(f"  Swagger UI {base}/api/v1/ui/   spec {base}/api/v1/openapi.json")
    say(f"  health {base}/healthz   readiness {base}/readyz   metrics {base}/metrics")
    sim = app.services.sim
    if sim is not None:
        scenario = sim.scenario
        say(f"  scenario {scenario.name!r}: {len(scenario.hosts)} hosts, {len(scenario.vms)} VMs;"
            f" control plane {base}/_sim/ui/")
        users = ", ".join(f"{u.username}/{u.password} ({u.role})" for u in scenario.users)
        say(f"  demo users: {users}")
        say(f"  sandboxes: POST {base}/_sim/sandboxes (admin; at most {settings.sandbox_max},"
            f" idle expiry {settings.sandbox_ttl} s)")
    if not settings.tls_cert and settings.host not in ("127.0.0.1", "::1", "localhost"):
        banner.warning("serving plain HTTP on %s: passwords and tokens cross the network in "
                       "clear; use --tls-cert/--tls-key or a TLS proxy", settings.host)
    # Everything built so far (spec, validators, scenario) lives as long as the process:
    # take it out of the collector's reach, or full collections stall requests 30-160 ms.
    from cockpit_api.http.pipeline import prepare
    prepare(app)  # Connexion's stack and the compiled pipelines, now rather than at start-up
    gc.collect()
    gc.freeze()
    head_limits = HeadLimits(settings.max_header_bytes, settings.max_headers,
                             settings.header_timeout, settings.keepalive_timeout)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
    # uvicorn's access log is off: ours (cockpit_api/http/access.py) has the request id, the
    # operation and the user, and leaves out the query string. log_config=None keeps the
    # handlers logs.configure installed (with RedactSecrets, just above); uvicorn's
    # loggers propagate to them.
    # timeout_graceful_shutdown: after SIGTERM/Ctrl-C, requests still running (a client
    # that stopped reading, a body that never arrives) are cancelled past it, so the process
    # exits in bounded time; open event streams end at once (draining_server).
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=args.log_level, log_config=None, access_log=False,
                            lifespan="on", loop="uvloop", http=protocol_with(head_limits),
                            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                            # a float works (asyncio.timeout), whatever the hint says
                            timeout_graceful_shutdown=settings.shutdown_timeout,  # type: ignore[arg-type]
                            # X-Forwarded-For/-Proto only from configured proxies: uvicorn's
                            # default believes any local process (127.0.0.1), which could then
                            # forge the address audit entries and login throttling go by.
                            proxy_headers=bool(settings.trusted_proxies),
                            forwarded_allow_ips=settings.trusted_proxies or None,
                            )
    try:
        draining_server(config, app.drain).run()
    finally:
        app.services.auth.store.close()
        if held is not None:
            held.close()
    return 0


def draining_server(config: Any, drain: Callable[[], None]) -> Any:
    """uvicorn's Server, which first ends the app's event streams when it shuts down.

    uvicorn waits for every connection to finish its response: an SSE client that stays
    kept the old process alive (port already closed) for as long as it listened.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            drain()
            await super().shutdown(sockets)

    # Past the timeout uvicorn cancels what still runs and says so in one line ("Cancel N
    # running task(s)"); each cancelled request would add a traceback of the cancellation.
    logging.getLogger("uvicorn.error").addFilter(_NoCancelledTracebacks())
    return _Server(config)


class _NoCancelledTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


_SECRET_QUERY = re.compile(r"([?&](?:ticket|token|access_token|refresh_token|password)=)[^&\s\"']*",
                           re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


class RedactSecrets(logging.Filter):
    """Blank tokens in log lines: a JWT anywhere, credential-like query values.

    Bodies (passwords, refresh tokens) are never logged (cockpit_api/http/validators.py);
    access tokens travel in headers, which uvicorn does not log, but a URL can carry
    one (`?ticket=`) and uvicorn's access log and trace log print URLs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # Its formatter reads the path from args[2]: redact it there.
            record.args = tuple(_JWT.sub("***", _SECRET_QUERY.sub(r"\1***", a))
                                if isinstance(a, str) else a for a in record.args)
            return True
        message = record.getMessage()
        clean = _JWT.sub("***", _SECRET_QUERY.sub(r"\1***", message))
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def _hash_password(args: argparse.Namespace) -> int:
    from cockpit_api.auth.service import hash_password

    if args.password_stdin or not sys.stdin.isatty():
        # A pipe (`echo pw | cockpit-api hash-password`) is read like --password-stdin:
        # getpass would find no terminal to prompt on.
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("password: ")
            again = getpass.getpass("again: ")
        except EOFError:
            print("no password given (pipe one in, or use --password-stdin)", file=sys.stderr)
            return 2
        if again != password:
            print("the passwords differ", file=sys.stderr)
            return 2
    if not password:
        print("an empty password is not allowed", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    from cockpit_api.auth.service import AuthService, AuthSettings
    from cockpit_api.store import open_store

    # create_state=False: a mistyped --state-dir is an error, not a new empty store.
    settings = Settings.load(args.config, flags={"state_dir": args.state_dir,
                                                 "store_url": args.store_url},
                             create_state=False)
    if settings.jwt_secret:
        print("the signing key is configured (jwt_secret): change it there", file=sys.stderr)
        return 2
    assert settings.store_url is not None  # resolve_state sets it
    store = open_store(settings.store_url, create=False)
    try:
        auth = AuthService([], AuthSettings(None, token_ttl=settings.token_ttl), store=store)
        if args.revoke is not None:
            if not auth.revoke_key(args.revoke):
                known = ", ".join(k.kid for k in store.signing_keys())
                print(f"cockpit-api: there is no signing key {args.revoke!r} in the store "
                      f"(its keys: {known})", file=sys.stderr)
                return 2
            print(f"signing key {args.revoke} revoked: tokens it signed are refused by every "
                  f"server within a second; the current key is {auth.current_kid()}")
            return 0
        kid = auth.rotate_key()
    finally:
        store.close()
    print(f"new signing key {kid}; servers sign with it within a minute, and tokens signed "
          "before keep verifying until they expire")
    return 0


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None,
                        help="where the embedded store lives (default "
                             "$XDG_STATE_HOME/cockpit-api or ~/.local/state/cockpit-api)")
    parser.add_argument("--store", default=None, metavar="URL", dest="store_url",
                        help="sqlite:///PATH or postgresql://USER:PASS@HOST/DB "
                             "(default: sqlite in the state directory)")


# `serve` flags that take a value, by setting name (argparse dest): read as text by
# config.SETTINGS, like the file and the environment.
_VALUE_FLAGS = ("backend", "scenario", "host", "port", "speed", "clock_start", "tls_cert",
                "tls_key", "log_format", "state_dir", "store_url", "shutdown_timeout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cockpit-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API (the simulated cluster by default)")
    serve.add_argument("--backend", default=None, help="sim (default) or libvirt")
    serve.add_argument("--scenario", default=None,
                       help="scenario name in scenarios/ or a YAML file (sim backend)")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", default=None, help="port (default 8080)")
    serve.add_argument("--config", default=None, help="TOML config file")
    _add_store_options(serve)
    serve.add_argument("--speed", default=None,
                       help="virtual seconds per real second for the simulator (default 1)")
    serve.add_argument("--clock-start", default=None,
                       help="pin the virtual clock's start: Unix seconds or an ISO 8601 time "
                            "(default: now)")
    serve.add_argument("--validate-responses", action="store_true",
                       help="check every answer against openapi.yaml (slower)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", default=None,
                       help="text (default) or json: one JSON object per line")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (request id, operation, status, duration, user)")
    serve.add_argument("--tls-cert", default=None,
                       help="PEM certificate (chain): serve HTTPS; needs --tls-key")
    serve.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    serve.add_argument("--shutdown-timeout", default=None, metavar="SECONDS",
                       help="after SIGTERM or Ctrl-C, event streams end at once and requests "
                            "still running after this many seconds are cancelled (default 3)")
    serve.set_defaults(func=_serve)

    hp = sub.add_parser("hash-password", help="print a password hash for [[users]] in the config")
    hp.add_argument("--password-stdin", action="store_true",
                    help="read the password from stdin (implied when stdin is a pipe)")
    hp.set_defaults(func=_hash_password)

    rk = sub.add_parser("rotate-key", help="make a new JWT signing key in the store "
                                           "(old tokens verify until they expire)")
    rk.add_argument("--config", default=None, help="TOML config file")
    _add_store_options(rk)
    rk.add_argument("--revoke", default=None, metavar="KID",
                    help="retire this key at once (a leak): tokens it signed are refused "
                         "everywhere; if it is the current key, a new one replaces it")
    rk.set_defaults(func=_rotate_key)

    from cockpit_api.conformance import runner as conformance
    from cockpit_api.snapshot import take as snapshot
    from cockpit_api.twin import command as twin

    conformance.add_parser(sub)
    snapshot.add_parser(sub)
    twin.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Connexion 3.3 imports Starlette's test client at import time (connexion/apps/abstract.py),
    # and Starlette then warns, on every start, about the test client's httpx dependency: a
    # warning about tests that a server user can do nothing about.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from cockpit_api.store import StoreError

    try:
        code: int = args.func(args)
    except (ConfigError, StoreError) as exc:
        print(f"cockpit-api: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from cockpit_api.conformance.runner import UsageError

        if isinstance(exc, UsageError):
            print(f"cockpit-api: {exc}", file=sys.stderr)
            return 2
        raise
    return code


if __name__ == "__main__":
    raise SystemExit(main())
