"""Clients generated from openapi.yaml build, type-check, and drive the served mock.

- openapi-python-client generates a Python client, which then makes each call of
  the reference against `cockpit-api serve` over loopback;
- openapi-typescript generates TypeScript types, and `tsc --strict` compiles a
  typed use of them (tests/data/client_use.ts).

A spec change that breaks either fails here.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.serving import ROOT, served

NODE_BIN = ROOT / "node_modules" / ".bin"
NO_NODE_TOOLS = "openapi-typescript / typescript not installed: run `npm ci` (make test does)"
DEST = "019e0014-ffff-7057-b326-000000000002"
OFF_VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01: shut off
RUNNING_VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01: on vapor-node-01


@pytest.fixture(scope="module")
def pyclient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    generator = shutil.which("openapi-python-client")
    if generator is None:
        pytest.skip("openapi-python-client is not installed (the test extra installs it)")
    if shutil.which("ruff") is None:
        pytest.skip("openapi-python-client needs ruff on PATH")
    out = tmp_path_factory.mktemp("pyclient")
    proc = subprocess.run(
        [generator, "generate", "--path", str(ROOT / "openapi.yaml"), "--meta", "none",
         "--output-path", str(out / "cockpit_client")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("cockpit_client")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.split(".")[0] == "cockpit_client"]:
            del sys.modules[name]


def _imp(name: str) -> Any:
    return importlib.import_module(f"cockpit_client.{name}")


def test_generated_python_client_drives_the_served_mock(pyclient: ModuleType) -> None:
    models = _imp("models")
    login = _imp("api.auth.login")
    refresh = _imp("api.auth.refresh")

    with served("--speed", "0") as base, \
            pyclient.Client(base_url=f"{base}/api/v1", raise_on_unexpected_status=True) as anon:
        pair = login.sync(client=anon, body=models.LoginRequest(username="admin", password="admin"))
        assert isinstance(pair, models.TokenPair) and pair.expires_in == 3600
        again = refresh.sync(client=anon,
                             body=models.RefreshRequest(refresh_token=pair.refresh_token))
        assert isinstance(again, models.TokenPair) and again.refresh_token != pair.refresh_token
        with pyclient.AuthenticatedClient(base_url=f"{base}/api/v1", token=again.token,
                                          raise_on_unexpected_status=True) as api:
            _reference_calls(models, api, base, again.token)


def _reference_calls(models: Any, api: Any, base: str, token: str) -> None:
    list_hosts = _imp("api.hosts.list_hosts")
    list_vms = _imp("api.vms.list_vms")
    get_vm = _imp("api.vms.get_vm")
    vm_action = _imp("api.vms.vm_action")
    migrate_vm = _imp("api.migrations.migrate_vm")
    get_migration = _imp("api.migrations.get_migration")

    hosts = list_hosts.sync(client=api)
    assert isinstance(hosts, models.HostList)
    assert hosts.hosts[0].hostname == "vapor-node-01.corp.awan.io"
    assert isinstance(hosts.hosts[0].sync_cursor, int)

    vms = list_vms.sync(client=api, limit=100)
    assert isinstance(vms, models.VmList) and len(vms.vms) == 14

    started = vm_action.sync(OFF_VM, client=api, body=models.ActionRequest(
        action=models.VmAction.START))
    assert isinstance(started, models.Vm) and started.status == models.VmStatus.RUNNING
    stopped = vm_action.sync(OFF_VM, client=api, body=models.ActionRequest(
        action=models.VmAction.STOP, force=True))
    assert isinstance(stopped, models.Vm) and stopped.status == models.VmStatus.SHUTOFF
    conflict = vm_action.sync(OFF_VM, client=api, body=models.ActionRequest(
        action=models.VmAction.STOP, force=True))
    assert isinstance(conflict, models.Problem)
    assert conflict.code == models.ProblemCode.VM_NOT_RUNNING

    accepted = migrate_vm.sync(RUNNING_VM, client=api, body=models.MigrateRequest(
        destination_host_id=DEST, live=True, persistent=True, undefine_source=True,
        copy_storage=models.CopyStorage.NONE))
    assert isinstance(accepted, models.MigrationAccepted)
    assert accepted.status == models.MigrationAcceptedStatus.INITIATED

    admin = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{base}/_sim/clock", json={"advance": 60}, headers=admin).status_code \
        == 200
    job = get_migration.sync(accepted.migration_id, client=api)
    assert isinstance(job, models.Migration) and job.status == models.MigrationStatus.COMPLETED
    vm = get_vm.sync(RUNNING_VM, client=api)
    assert isinstance(vm, models.Vm) and str(vm.host_id) == DEST


def test_generated_typescript_types_compile_strictly(tmp_path: Path) -> None:
    gen, tsc = NODE_BIN / "openapi-typescript", NODE_BIN / "tsc"
    if not gen.exists() or not tsc.exists():
        pytest.skip(NO_NODE_TOOLS)
    proc = subprocess.run([str(gen), str(ROOT / "openapi.yaml"), "-o",
                           str(tmp_path / "cockpit.ts")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.copy(ROOT / "tests" / "data" / "client_use.ts", tmp_path / "client_use.ts")
    proc = subprocess.run(
        [str(tsc), "--strict", "--noEmit", "--target", "es2020", "--module", "es2020",
         "--moduleResolution", "node", str(tmp_path / "client_use.ts")],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tsc_catches_a_broken_use(tmp_path: Path) -> None:
    """The control for the test above: a use the spec does not allow must fail to compile."""
    gen, tsc = NODE_BIN / "openapi-typescript", NODE_BIN / "tsc"
    if not gen.exists() or not tsc.exists():
        pytest.skip(NO_NODE_TOOLS)
    subprocess.run([str(gen), str(ROOT / "openapi.yaml"), "-o", str(tmp_path / "cockpit.ts")],
                   check=True, capture_output=True, timeout=120)
    (tmp_path / "bad.ts").write_text(
        'import type { components } from "./cockpit";\n'
        'const m: components["schemas"]["MigrateRequest"] = { destination: "x" };\n'
        "export { m };\n")
    proc = subprocess.run([str(tsc), "--strict", "--noEmit", str(tmp_path / "bad.ts")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0 and "destination" in proc.stdout
