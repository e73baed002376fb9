"""A pytest plugin: run the project's own tests with bench/variants.py patches applied.

    BENCH_PATCHES=page-cache \
        PYTHONPATH=.:bench .venv/bin/pytest -p patch_plugin tests/test_api.py contract_tests -q

Evidence that a recommended change keeps the contract (strict validation,
security, problem+json, answers): the suite that guards the server passes with
it.
"""

from __future__ import annotations

import os

import variants

_APPLIED = [p for p in os.environ.get("BENCH_PATCHES", "").split(",") if p]
for _name in _APPLIED:
    variants.PATCHES[_name]()


def pytest_report_header(config: object) -> str:
    return f"bench patches applied: {', '.join(_APPLIED) or 'none'}"
