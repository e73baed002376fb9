"""The specs themselves: valid OpenAPI 3.0, clean under Spectral and Redocly.

The linters come from the npm devDependencies in package.json (`npm ci` or
`npm install` at the repo root); without node_modules their test is skipped.
Both must report no error and no warning, with the rulesets in .spectral.yaml
(spectral:oas) and redocly.yaml (recommended).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from contract_tests.harness import ROOT, ST_CONFIG

SPECS = [ROOT / "openapi.yaml", ROOT / "cockpit_api" / "control.yaml",
         ROOT / "cockpit_api" / "ops.yaml"]
BIN = ROOT / "node_modules" / ".bin"


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("spec", SPECS, ids=_ids(SPECS))
def test_spec_is_valid_openapi(spec: Path) -> None:
    document = yaml.safe_load(spec.read_text(encoding="utf-8"))
    assert document["openapi"] == "3.0.3"
    validate(document)  # raises on the first violation of the OpenAPI 3.0 schema


def test_dictionaries_match_the_default_scenario() -> None:
    """The known ids schemathesis.toml mixes into generated data are the scenario's."""
    import tomllib

    from cockpit_api.backends.sim import scenario

    default = scenario.load("default")
    config = tomllib.loads(ST_CONFIG.read_text(encoding="utf-8"))
    dictionaries = config["dictionaries"]
    assert dictionaries["host-ids"]["values"] == [h.id for h in default.hosts]
    assert dictionaries["vm-ids"]["values"] == [v.id for v in default.vms]
    users = {(u.username, u.password) for u in default.users}
    assert users <= {(u, p) for u in dictionaries["usernames"]["values"]
                     for p in dictionaries["passwords"]["values"]}


def _linter(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is absent: run `npm ci` (or `npm install`) at the "
                    "repo root to install the spec linters pinned in package.json")
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, REDOCLY_TELEMETRY="off", REDOCLY_SUPPRESS_UPDATE_NOTICE="true",
               NO_COLOR="1")
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize("spec", SPECS, ids=_ids(SPECS))
def test_spectral_finds_nothing(spec: Path) -> None:
    spectral = _linter("spectral")
    run = _run([str(spectral), "lint", "--ruleset", ".spectral.yaml", "--format", "json",
                "--quiet", str(spec.relative_to(ROOT))])
    # Spectral prints `[]` when nothing is found, and exits non-zero on errors.
    results = json.loads(run.stdout or "[]")
    problems = [f"{r['path']} {r['code']} ({['error', 'warning', 'info', 'hint'][r['severity']]}): "
                f"{r['message']}" for r in results if r["severity"] <= 1]
    assert not problems, "\n".join(problems)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("spec", SPECS, ids=_ids(SPECS))
def test_redocly_finds_nothing(spec: Path) -> None:
    redocly = _linter("redocly")
    run = _run([str(redocly), "lint", "--config", "redocly.yaml", "--format", "json",
                str(spec.relative_to(ROOT))])
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    totals = report["totals"]
    problems = [f"{p['ruleId']} ({p['severity']}): {p['message']}" for p in report["problems"]]
    assert totals["errors"] == 0 and totals["warnings"] == 0, "\n".join(problems)
