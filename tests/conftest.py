"""Fixtures: a simulated cluster on a frozen virtual clock, an app over it, tokens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cockpit_api.app import CockpitApp, create_app
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import Settings
from cockpit_api.http import pipeline

# Headless Chromium for any test that asks for `browser`, `context` or `page`.
from tests.browser import browser, console, context, page  # noqa: F401
from tests.lab_support import lab_env  # noqa: F401 - one lab per session for every lab module
from tests.pg import Postgres, pg_bin, running_postgres
from tests.serving import login

# Every request of the suite goes through the compiled pipeline; this also checks each
# one's handler arguments against Connexion's own get_arguments (cockpit_api/http/pipeline.py).
pipeline.Pipeline.crosscheck = True
_SERVED = pipeline.Stats()  # summed over the suite's apps, printed at the end

T0 = 1_800_000_000.0
SECRET = "test-secret-that-is-long-enough-for-every-hmac-algorithm-0123456789"
NODE1 = "019e0014-abcd-7057-b326-000000000001"
NODE2 = "019e0014-ffff-7057-b326-000000000002"
NODE3 = "019e0014-1a2b-7057-b326-000000000003"
NODE4 = "019e0014-dead-7057-b326-000000000004"  # disconnected in the default scenario


@pytest.fixture(scope="session", autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Servers started by tests keep their state in a temporary directory, never in $HOME."""
    home = tmp_path_factory.mktemp("xdg-state")
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL for the session (skipped only when its binaries are absent)."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed: "
                    "apt-get install postgresql (make test does it as root)")
    with running_postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store on each engine: the same tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()


class FakeClock:
    """Wall time for auth, moved by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


@pytest.fixture
def sim(clock: VirtualClock) -> SimulatedBackend:
    return SimulatedBackend(scenario.load("default"), clock)


@pytest.fixture
def auth_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def app(sim: SimulatedBackend, auth_clock: FakeClock, sleeps: list[float]) -> CockpitApp:
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = Settings(validate_responses=True, jwt_secret=SECRET)
    return create_app(settings, backend=sim, auth_clock=auth_clock, sleep=fake_sleep)


@pytest.fixture
def client(app: CockpitApp) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c
    compiled = pipeline.of(app)
    assert compiled is not None and compiled.disabled_reason is None, "compiled pipeline off"
    _SERVED.compiled += compiled.stats.compiled
    _SERVED.passed += compiled.stats.passed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SERVED.compiled or _SERVED.passed:
        terminalreporter.write_line(
            f"compiled pipeline: {_SERVED.compiled} requests served by compiled operations, "
            f"{_SERVED.passed} passed to Connexion's stack (404/405, HEAD, UI, specs)")


@pytest.fixture
def admin(client: TestClient) -> dict[str, str]:
    return login(client, "admin", "admin")


@pytest.fixture
def viewer(client: TestClient) -> dict[str, str]:
    return login(client, "viewer", "viewer")


@pytest.fixture
def password_checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every password check the auth service makes, (password, stored hash), still made."""
    import cockpit_api.auth.service as auth_mod

    checked: list[tuple[str, str]] = []
    real = auth_mod.verify_password

    def counting(password: str, encoded: str) -> bool:
        checked.append((password, encoded))
        return real(password, encoded)

    monkeypatch.setattr(auth_mod, "verify_password", counting)
    return checked
