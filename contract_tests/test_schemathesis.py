"""Schemathesis conformance of the in-process app: every operation, every check.

Each operation of /api/v1 and of the simulator's control plane (/_sim) goes
through the examples, coverage and fuzzing phases with positive and negative
data and every built-in check (schemathesis.toml); ``test_api_stateful`` then
chains operations along the spec's links. The admin token is used throughout;
``test_api_as_viewer`` repeats the run with the read-only role, so that the
403 answers are checked too.

The schemas are loaded at import time because ``schema.parametrize()`` needs
them to make one test per operation. (``schemathesis.pytest.from_fixture`` does
not work with pytest 9.2: schemathesis 4.32.5 sets ``request.node._nodeid``,
which pytest 9.2 no longer has.)
"""

from __future__ import annotations

import hypothesis
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.generation import GenerationMode

from cockpit_api.backends.sim.backend import SimulatedBackend
from contract_tests.harness import (
    API_SPEC,
    CONTROL_SPEC,
    MAX_EXAMPLES,
    VIEWER,
    make_target,
    reset_state,
)

# Virtual seconds that pass before each stateful step: enough for a guest to act
# on a graceful stop and for a migration to progress and finish within a scenario.
STEP_SECONDS = 2.0

API = make_target(API_SPEC)
API_AS_VIEWER = make_target(API_SPEC, VIEWER)
CONTROL = make_target(CONTROL_SPEC)


@API.schema.parametrize()
def test_api(case: schemathesis.Case) -> None:
    case.call_and_validate()


@API_AS_VIEWER.schema.parametrize()
def test_api_as_viewer(case: schemathesis.Case) -> None:
    case.call_and_validate()


@CONTROL.schema.parametrize()
def test_control_plane(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_api_stateful() -> None:
    target = make_target(API_SPEC)
    services = target.app.services

    class APIWorkflow(target.schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Every scenario starts from the same cluster and auth state, so that
            # Hypothesis can replay (and shrink) a failing one.
            reset_state(target.app)

        def before_call(self, case: schemathesis.Case) -> None:
            backend = services.backend
            assert isinstance(backend, SimulatedBackend)
            backend.advance(STEP_SECONDS)

    APIWorkflow.run(settings=hypothesis.settings(
        target.schema.config.get_hypothesis_settings(phase="stateful"),
        max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None))


def test_every_check_mode_and_phase_is_on() -> None:
    """Guards the configuration above: nothing is quietly left out."""
    load_all_checks()
    config = API.schema.config
    checks = config.checks_config_for(operation=None, phase=None)
    names = CHECKS.get_all_names()
    assert {"negative_data_rejection", "positive_data_acceptance", "use_after_free",
            "ensure_resource_availability", "ignored_auth", "missing_required_header",
            "unsupported_method", "not_a_server_error", "response_schema_conformance",
            "allow_header_conformance"} <= set(names)
    assert [n for n in names if not checks.get_by_name(name=n).enabled] == []
    generation = config.generation_for(operation=None)
    assert set(generation.modes) == {GenerationMode.POSITIVE, GenerationMode.NEGATIVE}
    assert generation.deterministic
    phases = config.phases_for(operation=None)
    assert all(phases.get_by_name(name=p).enabled
               for p in ("examples", "coverage", "fuzzing", "stateful"))
