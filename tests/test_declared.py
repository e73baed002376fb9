"""Nothing a client can receive is undeclared, and the served spec is the one written.

- every operation declares a shared ``default`` problem answer, and 413/415
  where it takes a body; always-sent headers are ``required``;
- every ``code`` the server can send is in the ``ProblemCode`` enum;
- ``/api/v1/openapi.json`` keeps its ``$ref``s and named components;
- the enums clients switch on are named schemas;
- Swagger UI's "Try it out" prefills no optional query value, and the login
  example logs in on the simulator;
- the prose says what the server does (disconnected hosts, list_hosts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from tests.conftest import NODE1

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "openapi.yaml"
CONTROL = ROOT / "cockpit_api" / "control.yaml"
METHODS = ("get", "put", "post", "delete", "patch")


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items()
            for method, op in item.items() if method in METHODS]


@pytest.mark.parametrize("spec", [SPEC, CONTROL], ids=["api", "control"])
def test_every_operation_declares_every_status_it_can_send(spec: Path) -> None:
    for path, method, op in _operations(_load(spec)):
        responses = op["responses"]
        assert "default" in responses, f"{method} {path}: no default problem answer"
        if "requestBody" in op:
            assert {"400", "413", "415"} <= set(responses), f"{method} {path}"


def test_headers_always_sent_are_required() -> None:
    doc = _load(SPEC)
    assert doc["components"]["headers"]["RetryAfter"]["required"] is True
    assert doc["components"]["headers"]["WWWAuthenticate"]["required"] is True
    location = doc["paths"]["/vms/{id}/migrate"]["post"]["responses"]["202"]["headers"]
    assert location["Location"]["required"] is True


def _codes_in_source() -> set[str]:
    """Every problem code the Python sources can send (keyword, positional, class default)."""
    patterns = [
        r'code="([a-z_]+)"',                                     # SomeError("...", code="x")
        r'code, title = \d+, "([a-z_]+)"',                       # class default
        r'^\s+code = "([a-z_]+)"',
        r'(?:AuthError|Forbidden)\([^()]*?"[^"]*",\s*"([a-z_]+)"\)',  # AuthError("...", "x")
        r'\d{3}: "([a-z_]+)"',                                   # problems._CODES
    ]
    codes: set[str] = set()
    for folder in ("backends", "cockpit_api", "handlers"):
        for py in (ROOT / folder).rglob("*.py"):
            text = py.read_text(encoding="utf-8")
            for pattern in patterns:
                codes |= set(re.findall(pattern, text, flags=re.MULTILINE))
    # The one place libvirt errors become codes names some as constants.
    errors = (ROOT / "backends" / "libvirt" / "errors.py").read_text(encoding="utf-8")
    codes |= set(re.findall(r'^[A-Z_]+ = "([a-z_]+)"$', errors, flags=re.MULTILINE))
    codes.add("error")  # problems.problem's fallback for a status without a code
    return codes


def test_every_code_the_server_sends_is_in_the_problem_code_enum() -> None:
    enum = set(_load(SPEC)["components"]["schemas"]["ProblemCode"]["enum"])
    found = _codes_in_source()
    assert {"vm_running", "invalid_cursor", "throttled", "missing_token"} <= found  # the scan
    assert found <= enum, f"add to ProblemCode: {sorted(found - enum)}"


def test_the_served_spec_keeps_its_refs_and_names(client: TestClient) -> None:
    written = _load(SPEC)
    served = client.get("/api/v1/openapi.json").json()
    assert served == {**written, "servers": [{"url": "/api/v1"}]}
    schemas = served["components"]["schemas"]
    assert {"VmAction", "VmStatus", "MigrationStatus", "CopyStorage", "ProblemCode",
            "FieldError"} <= set(schemas)
    assert schemas["ActionRequest"]["properties"]["action"] == {
        "$ref": "#/components/schemas/VmAction"}
    assert schemas["Migration"]["properties"]["copy_storage"] == {
        "$ref": "#/components/schemas/CopyStorage"}
    assert schemas["Vm"]["properties"]["host_id"]["allOf"] == [
        {"$ref": "#/components/schemas/Uuid"}]
    assert schemas["Problem"]["properties"]["code"] == {"$ref": "#/components/schemas/ProblemCode"}
    assert yaml.safe_load(client.get("/api/v1/openapi.yaml").text) == served
    control = client.get("/_sim/openapi.json").json()
    assert control["paths"]["/clock"]["post"]["responses"]["400"] == {
        "$ref": "#/components/responses/Problem"}


def test_try_it_out_prefills_no_optional_query_value() -> None:
    doc = _load(SPEC)

    def resolve(p: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in p:
            resolved: dict[str, Any] = doc["components"]["parameters"][p["$ref"].rsplit("/")[-1]]
            return resolved
        return p

    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            for param in map(resolve, [*item.get("parameters", []), *op.get("parameters", [])]):
                if param["in"] == "query" and not param.get("required"):
                    assert "example" not in param and "examples" not in param, \
                        f"{method} {path} ?{param['name']}"
                    schema = param.get("schema", {})
                    if "$ref" in schema:
                        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/")[-1]]
                    assert "example" not in schema, f"{method} {path} ?{param['name']}"


def test_the_login_example_logs_in_on_the_simulator(client: TestClient) -> None:
    op = _load(SPEC)["paths"]["/auth/login"]["post"]
    example = op["requestBody"]["content"]["application/json"]["example"]
    assert client.post("/api/v1/auth/login", json=example).status_code == 200


def test_the_prose_says_what_the_server_does(client: TestClient,
                                             admin: dict[str, str]) -> None:
    hosts = _load(SPEC)["paths"]["/hosts"]["get"]
    assert "connected" not in hosts["summary"]  # it lists every host, connected or not
    disconnect = _load(CONTROL)["paths"]["/hosts/{host_id}/disconnect"]["post"]["description"]
    assert "503 `host_disconnected`" in disconnect
    client.post(f"/_sim/hosts/{NODE1}/disconnect", headers=admin)
    vm = next(v for v in client.get("/api/v1/vms", headers=admin).json()["vms"]
              if v["host_id"] == NODE1 and v["status"] == "running")
    r = client.post(f"/api/v1/vms/{vm['id']}/action", json={"action": "stop"}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (503, "host_disconnected")
    assert int(r.headers["retry-after"]) > 0


def _schemas_in(node: Any, where: str = "") -> Any:
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _schemas_in(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schemas_in(value, f"{where}/{i}")


@pytest.mark.parametrize("path", [SPEC, CONTROL, ROOT / "cockpit_api" / "ops.yaml"],
                         ids=lambda p: p.name)
def test_every_nullable_schema_says_its_type(path: Path) -> None:
    """OpenAPI 3.0.3: `nullable` acts only beside a `type`; strict tools read allOf +
    nullable as not nullable, and a null-only anyOf branch (`enum: [null]`) made orval
    emit `X |  | null`. A nullable reference is written out (Vm.migration_id)."""
    for where, node in _schemas_in(_load(path)):
        if node.get("nullable"):
            assert "type" in node and not {"$ref", "allOf", "anyOf", "oneOf"} & set(node), \
                f"{path.name}{where}"
        for key in ("anyOf", "oneOf"):
            for branch in node.get(key, []):
                assert branch.get("enum") != [None], f"{path.name}{where}: a null-only branch"


def test_a_vms_migration_id_is_a_migration_id_or_null() -> None:
    schemas = _load(SPEC)["components"]["schemas"]
    written = dict(schemas["Vm"]["properties"]["migration_id"])
    assert written.pop("nullable") is True
    for key in ("type", "pattern", "minLength", "maxLength"):
        assert written[key] == schemas["MigrationId"][key], key
