"""What the contract tests share: the app under test, logging in, schemathesis settings.

The app is built as ``cockpit-api serve`` builds it, with response validation
on, over a fresh simulated cluster (the default scenario) whose virtual clock
is frozen, and with a frozen auth clock, so that a run repeats exactly. Tokens
are obtained through the API itself (POST /api/v1/auth/login) and schemas are
loaded from what the app serves, so what is tested is what a client downloads.

Budget and seed come from the environment:

``CONTRACT_MAX_EXAMPLES`` (default 50)
    examples per operation and phase, and scenarios of the stateful run;
``CONTRACT_MAX_STEPS`` (default 12)
    steps per stateful scenario;
``CONTRACT_SEED`` (default 20261127)
    the seed; generation is derandomized too.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import schemathesis
from schemathesis.python import asgi
from schemathesis.specs.openapi.schemas import OpenApiSchema

from cockpit_api.app import CockpitApp, create_app
from cockpit_api.auth.service import AuthService
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import Settings
from tests.serving import free_port  # noqa: F401 - the tests' one, imported from here too
from tests.serving import login as bearer_login

ROOT = Path(__file__).resolve().parent.parent
ST_CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
JWT_SECRET = "a fixed secret of at least 32 bytes!!"
CLOCK_START = 1_800_000_000
ADMIN = ("admin", "admin")
VIEWER = ("viewer", "viewer")
API_SPEC = "/api/v1/openapi.json"
CONTROL_SPEC = "/_sim/openapi.json"

MAX_EXAMPLES = int(os.environ.get("CONTRACT_MAX_EXAMPLES", "50"))
MAX_STEPS = int(os.environ.get("CONTRACT_MAX_STEPS", "12"))
SEED = int(os.environ.get("CONTRACT_SEED", "20261127"))


async def _no_sleep(_seconds: float) -> None:
    """Simulated latency (set through /_sim/latency) must not stall the test run."""


def new_backend() -> SimulatedBackend:
    """The default scenario at its first state, on a frozen virtual clock."""
    return SimulatedBackend(scenario.load("default"), VirtualClock(CLOCK_START))


def build_app() -> CockpitApp:
    """The app as the CLI builds it, with response validation on and frozen clocks."""
    return create_app(
        Settings(validate_responses=True, jwt_secret=JWT_SECRET),
        backend=new_backend(),
        # Token expiry and login throttling read this clock: frozen, the run repeats exactly.
        auth_clock=lambda: float(CLOCK_START),
        sleep=_no_sleep,
    )


def reset_state(app: CockpitApp) -> None:
    """Back to how build_app left it: a new cluster, no refresh token, no failed login.

    Access tokens already issued stay valid: they are checked against the secret
    and the users only.
    """
    services = app.services
    services.backend = new_backend()
    old = services.auth
    # A new in-memory store: no session, counter or audit entry survives the reset.
    services.auth = AuthService(list(old.users.values()), old.settings, clock=old.clock)
    services.store = services.auth.store


def login(app: CockpitApp, username: str, password: str) -> str:
    """An access token, obtained the way a client gets one."""
    with asgi.get_client(cast(Any, app)) as client:
        token = bearer_login(client, username, password)["Authorization"].removeprefix("Bearer ")
    assert token
    return token


def st_settings(token: str | None = None, *, max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """schemathesis.toml with this run's budget and seed, and the bearer token."""
    data = tomllib.loads(ST_CONFIG.read_text(encoding="utf-8"))
    data["seed"] = SEED
    data["generation"]["max-examples"] = max_examples
    data["phases"]["stateful"]["max-steps"] = MAX_STEPS
    if token is not None:
        data["auth"] = {"openapi": {"bearerAuth": {"bearer": token}}}
    return data


def st_config(token: str, *, max_examples: int = MAX_EXAMPLES) -> schemathesis.Config:
    """Every check, both generation modes, every phase, deterministic, this bearer token."""
    return schemathesis.Config.from_dict(st_settings(token, max_examples=max_examples),
                                         base_dir=str(ST_CONFIG.parent))


@dataclass
class Target:
    """One app under test, the token it is called with, and the schema it serves."""

    app: CockpitApp
    token: str
    schema: OpenApiSchema


def make_target(spec_path: str, user: tuple[str, str] = ADMIN) -> Target:
    app = build_app()
    token = login(app, *user)
    schema = schemathesis.openapi.from_asgi(spec_path, app, config=st_config(token))
    return Target(app, token, schema)
