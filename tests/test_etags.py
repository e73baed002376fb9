"""ETags: every GET the README names has one, and a tag moves only with its own answer.

They were the whole world's feed position (any change anywhere made every cached
resource stale, and two servers gave different tags to the same bytes); /audit,
the metrics and /auth/me had none.
"""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.conftest import NODE1, NODE2, T0

API = "/api/v1"
OFF_VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off on NODE1
DB1 = "f4d6d235-08bd-4d96-b6e9-c8092966493d"  # db-primary-01, running on NODE2
WINDOW = f"?start={int(T0) - 3600}&end={int(T0)}&step=300"

EVERY_GET = [
    "/hosts", f"/hosts/{NODE1}", f"/hosts/{NODE2}", "/vms", f"/vms?host_id={NODE2}",
    f"/vms/{OFF_VM}", f"/vms/{DB1}", "/migrations", f"/hosts/{NODE2}/metrics{WINDOW}",
    f"/vms/{DB1}/metrics{WINDOW}", f"/vms/{DB1}/metrics", "/audit", "/auth/me",
]


def _tags(client: TestClient, h: dict[str, str]) -> dict[str, str]:
    tags = {}
    for path in EVERY_GET:
        r = client.get(API + path, headers=h)
        assert r.status_code == 200, (path, r.text)
        tag = r.headers.get("etag")
        assert tag is not None and tag.startswith('"') and tag.endswith('"'), (path, tag)
        again = client.get(API + path, headers={**h, "If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"", path
        assert again.headers["etag"] == tag, path
        tags[path] = tag
    return tags


def test_every_get_has_an_etag_and_answers_304(client: TestClient,
                                               admin: dict[str, str]) -> None:
    _tags(client, admin)
    # Weak comparison, lists of tags and "*", as RFC 9110 says for If-None-Match.
    tag = client.get(f"{API}/auth/me", headers=admin).headers["etag"]
    for sent in (f"W/{tag}", f'"other", {tag}', "*"):
        r = client.get(f"{API}/auth/me", headers={**admin, "If-None-Match": sent})
        assert r.status_code == 304, sent


def test_a_tag_moves_only_with_its_own_answer(client: TestClient,
                                              admin: dict[str, str]) -> None:
    before = _tags(client, admin)
    r = client.post(f"{API}/vms/{OFF_VM}/action", json={"action": "start"}, headers=admin)
    assert r.status_code == 200, r.text
    after = _tags(client, admin)
    moved = {p for p in EVERY_GET if before[p] != after[p]}
    # The VM, the pages that list it, and the audit log (the write is in it) changed;
    # nothing on NODE2, no migration, no fixed metrics window, not who I am.
    assert {f"/vms/{OFF_VM}", "/vms", "/audit"} <= moved
    assert moved <= {f"/vms/{OFF_VM}", "/vms", "/audit", f"/hosts/{NODE1}", "/hosts"}, moved
    # Back to the same bytes, back to the same tag.
    r = client.post(f"{API}/vms/{OFF_VM}/action", json={"action": "stop", "force": True},
                    headers=admin)
    assert r.status_code == 200, r.text
    assert client.get(f"{API}/vms/{OFF_VM}", headers=admin).headers["etag"] == \
        before[f"/vms/{OFF_VM}"]


def test_the_audit_tag_moves_with_a_new_entry(client: TestClient,
                                              admin: dict[str, str]) -> None:
    tag = client.get(f"{API}/audit", headers=admin).headers["etag"]
    assert client.post(f"{API}/auth/login", json={"username": "viewer",
                                                  "password": "viewer"}).status_code == 200
    r = client.get(f"{API}/audit", headers={**admin, "If-None-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] != tag
    assert r.json()["entries"][0]["operation"] == "login"


def test_a_new_migration_moves_the_migrations_tag(client: TestClient,
                                                  admin: dict[str, str]) -> None:
    tag = client.get(f"{API}/migrations", headers=admin).headers["etag"]
    r = client.post(f"{API}/vms/{DB1}/migrate", json={"destination_host_id": NODE1},
                    headers=admin)
    assert r.status_code == 202, r.text
    r = client.get(f"{API}/migrations", headers={**admin, "If-None-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] != tag
