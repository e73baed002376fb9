"""bench/run.py keeps working: every phase once, as short as possible (``--smoke``).

The numbers are meaningless at 1 s a round on a shared machine; what is checked is that
every server starts, every wrk script runs without errors and the report is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("wrk") is None,
                    reason="wrk is not installed (apt-get install wrk)")
def test_bench_quick_no_prism_runs(tmp_path: Path) -> None:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--no-prism", "--smoke",
         "--results-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "quick-latest.json").read_text())
    assert set(results["comparison"]) == {"ours", "ours, Connexion's stack", "ceiling"}
    assert set(results["operations"]) == {"GET /vms/{id}", "action + GET", "migrate + poll"}
    for table in [results["comparison"], *results["operations"].values()]:
        for name, row in table.items():
            assert row["ok"] and row["rps"] > 0, (name, row)
    assert {c["vms"] for c in results["curves"]} == {20}
    assert results["startup"]["median_s"] > 0
    assert "### Targets" in (tmp_path / "quick-latest.md").read_text()
