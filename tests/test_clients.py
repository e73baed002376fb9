"""Clients generated from openapi.yaml build, type-check, and drive the served mock.

- openapi-python-client generates a Python client, which then makes each call of
  the reference against `cockpit-api serve` over loopback;
- openapi-typescript generates TypeScript types, and `tsc --strict` compiles a
  typed use of them (tests/data/client_use.ts);
- five generators (orval, hey-api, openapi-typescript; openapi-python-client and
  datamodel-code-generator under mypy) type every nullable reference as "X or null".

A spec change that breaks either fails here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
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


# Each TypeScript generator's Vm and MigrationId, and a use that compiles only when
# `migration_id` is exactly `MigrationId | null`, i.e. `string | null` (not any, not a
# union with a stray member).
TS_NULLABLE_USE = """\
{imports}
type Exact<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type NotAny<T> = 0 extends 1 & T ? false : true;
export const exact: Exact<Vm["migration_id"], MigrationId | null> = true;
export const typed: NotAny<Vm["migration_id"]> = true;
export const plain: Exact<MigrationId, string> = true;
export function moving(vm: Vm): string {{
  return vm.migration_id === null ? "idle" : vm.migration_id.toUpperCase();
}}
"""
TS_GENERATORS: dict[str, tuple[list[str], str]] = {
    # name: (command after the spec path's placeholder, the import lines for the use)
    "orval": (["orval", "--input", "{spec}", "--output", "{out}/orval/api.ts", "--client",
               "fetch"],
              'import type { Vm, MigrationId } from "./orval/api";'),
    "hey-api": (["openapi-ts", "--input", "{spec}", "--output", "{out}/hey", "--silent"],
                'import type { Vm, MigrationId } from "./hey/types.gen";'),
    "openapi-typescript": (["openapi-typescript", "{spec}", "-o", "{out}/ot.ts"],
                           'import type { components } from "./ot";\n'
                           'type Vm = components["schemas"]["Vm"];\n'
                           'type MigrationId = components["schemas"]["MigrationId"];'),
}
PY_NULLABLE_USE = """\
from typing import assert_type

from {module} import Vm


def moving(vm: Vm) -> str:
    assert_type(vm.migration_id, {expected})
    return "idle" if vm.migration_id is None else {text}
"""


def test_typescript_generators_type_nullable_references(tmp_path: Path) -> None:
    """orval (7.13 wrote `MigrationId |  | null` for the anyOf-with-null form: TS1110),
    hey-api and openapi-typescript; the generated code and a typed use under `tsc --strict`."""
    tsc = NODE_BIN / "tsc"
    if not tsc.exists() or not all((NODE_BIN / cmd[0]).exists()
                                   for cmd, _ in TS_GENERATORS.values()):
        pytest.skip("orval / @hey-api/openapi-ts / openapi-typescript not installed: npm ci")
    sources = []
    for name, (cmd, imports) in TS_GENERATORS.items():
        argv = [str(NODE_BIN / cmd[0]),
                *(a.format(spec=ROOT / "openapi.yaml", out=tmp_path) for a in cmd[1:])]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"
        use = tmp_path / f"use_{name.replace('-', '_')}.ts"
        use.write_text(TS_NULLABLE_USE.format(imports=imports))
        sources.append(str(use))
    # Everything generated is compiled too (orval's fetch client, hey-api's SDK), in one run.
    sources += [str(tmp_path / "orval" / "api.ts"), str(tmp_path / "hey" / "index.ts")]
    proc = subprocess.run(
        [str(tsc), "--strict", "--noEmit", "--target", "es2022", "--module", "es2022",
         "--moduleResolution", "bundler", *sources],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_generators_type_nullable_references(pyclient: ModuleType,
                                                    tmp_path: Path) -> None:
    """datamodel-code-generator (pydantic models) and openapi-python-client, under mypy."""
    generator = shutil.which("datamodel-codegen")
    if generator is None:
        pytest.skip("datamodel-code-generator is not installed (the test extra installs it)")
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (the lint extra installs it)")
    # --strict-nullable: its documented switch for OpenAPI 3.0's `nullable` on required fields
    # (without it every required field is typed non-null, whatever the spec says);
    # --field-constraints: `str` with Field(pattern=...), which mypy reads, not constr(...).
    proc = subprocess.run(
        [generator, "--input", str(ROOT / "openapi.yaml"), "--input-file-type", "openapi",
         "--output", str(tmp_path / "dm_models.py"), "--output-model-type",
         "pydantic_v2.BaseModel", "--strict-nullable", "--field-constraints",
         "--formatters", "black",
         "--target-python-version", "3.11"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "use_dm.py").write_text(PY_NULLABLE_USE.format(
        module="dm_models", expected="str | None", text="vm.migration_id"))
    (tmp_path / "use_opc.py").write_text(PY_NULLABLE_USE.format(
        module="cockpit_client.models", expected="str | None", text="vm.migration_id"))
    client_dir = Path(pyclient.__file__).parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports",
         "silent", "--python-version", "3.11", "use_dm.py", "use_opc.py"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(client_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
