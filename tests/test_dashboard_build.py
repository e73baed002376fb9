"""The dashboard's build (dashboard/build.py): typed against the specs, committed current.

- the committed cockpit_api/dashboard/{js,vendor} is exactly what the sources, the
  specs and the pinned uPlot build now (so `make serve` needs no Node);
- a spec change that breaks the page fails tsc (the control: rename a field the page
  reads).
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.serving import ROOT

NODE_MODULES = ROOT / "node_modules"
STATIC = ROOT / "cockpit_api" / "dashboard"
pytestmark = pytest.mark.skipif(
    not (NODE_MODULES / ".bin" / "tsc").exists()
    or not (NODE_MODULES / ".bin" / "openapi-typescript").exists()
    or not (NODE_MODULES / "uplot").exists(),
    reason="TypeScript, openapi-typescript or uplot not installed: run `npm ci` (make test does)")


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_build",
                                                  ROOT / "dashboard" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sources(tmp: Path) -> Path:
    src = tmp / "dashboard"
    shutil.copytree(ROOT / "dashboard", src, ignore=shutil.ignore_patterns("generated"))
    # tsc finds uPlot's types by walking up from the tsconfig, as in the repo.
    (tmp / "node_modules").symlink_to(NODE_MODULES)
    return src


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_the_committed_build_is_what_the_sources_give(tmp_path: Path) -> None:
    build = _build_module()
    out = tmp_path / "out"
    build.build(src=_sources(tmp_path), out=out, node_modules=NODE_MODULES)
    for sub in ("js", "vendor"):
        fresh, committed = _files(out / sub), _files(STATIC / sub)
        assert fresh == committed, f"{sub}: run `make dashboard` and commit the result"
        _, mismatch, errors = filecmp.cmpfiles(out / sub, STATIC / sub, sorted(fresh),
                                               shallow=False)
        assert not mismatch and not errors, \
            f"stale {sub}: {mismatch + errors}: run `make dashboard` and commit the result"


def test_a_spec_change_that_breaks_the_page_fails_tsc(tmp_path: Path) -> None:
    build = _build_module()
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    # The page shows a VM's migration from `migration_id`: rename it in a copy.
    vm = spec["components"]["schemas"]["Vm"]
    vm["properties"]["job_id"] = vm["properties"].pop("migration_id")
    vm["required"] = ["job_id" if r == "migration_id" else r for r in vm["required"]]
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    src = _sources(tmp_path)
    build.generate_types(src, NODE_MODULES, {
        "cockpit.d.ts": tmp_path / "openapi.json",
        "control.d.ts": ROOT / "cockpit_api" / "control.yaml"})
    with pytest.raises(build.BuildError, match="migration_id"):
        build.compile_ts(src, tmp_path / "out", NODE_MODULES)
