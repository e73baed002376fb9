"""Authentication and authorization, through the HTTP API and on the service itself."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from starlette.testclient import TestClient

from cockpit_api.auth.service import (
    AuthError,
    AuthService,
    AuthSettings,
    User,
    hash_password,
    verify_password,
)
from tests.conftest import SECRET, T0, FakeClock, login

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
ADMIN = {"username": "admin", "password": "admin"}


def _claims(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def test_login_answers_the_reference_keys(client: TestClient) -> None:
    r = client.post(LOGIN, json={"username": "admin", "password": "admin"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "refresh_token", "expires_in"}
    assert body["expires_in"] == 3600
    claims = _claims(body["token"])
    assert {"sub", "role", "iat", "exp", "jti", "iss", "aud"} <= set(claims)
    assert claims["sub"] == "admin" and claims["role"] == "admin"
    assert claims["exp"] == claims["iat"] + 3600  # type: ignore[operator]
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"


def test_wrong_password_is_401_with_bearer_challenge(client: TestClient) -> None:
    r = client.post(LOGIN, json={"username": "admin", "password": "nope"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "bad_credentials"


def test_unknown_user_looks_like_a_wrong_password(client: TestClient) -> None:
    a = client.post(LOGIN, json={"username": "ghost", "password": "x"}).json()
    b = client.post(LOGIN, json={"username": "admin", "password": "x"}).json()
    assert a["detail"] == b["detail"] and a["code"] == b["code"]


def test_a_missing_token_is_401(client: TestClient) -> None:
    r = client.get("/api/v1/vms")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["code"] == "missing_token"


def _forge(claims: dict[str, object], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def _good_claims(**over: object) -> dict[str, object]:
    c: dict[str, object] = {"sub": "admin", "role": "admin", "iat": int(T0), "exp": int(T0) + 60,
                            "jti": "x", "sid": "s", "iss": "cockpit-api", "aud": "cockpit-api",
                            "typ": "access"}
    c.update(over)
    return c


def _alg_none(claims: dict[str, object]) -> str:
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(_alg_none(_good_claims()), id="alg-none"),
        pytest.param(_forge(_good_claims(), secret="another-secret-of-32-bytes-or-more!!"),
                     id="bad-signature"),
        pytest.param(_forge(_good_claims(exp=int(T0) - 1)), id="expired"),
        pytest.param(_forge(_good_claims(iss="someone-else")), id="wrong-issuer"),
        pytest.param(_forge(_good_claims(aud="another-api")), id="wrong-audience"),
        pytest.param(_forge(_good_claims(typ="refresh")), id="not-an-access-token"),
        pytest.param(_forge(_good_claims(sub="ghost")), id="unknown-user"),
        pytest.param(_forge({k: v for k, v in _good_claims().items() if k != "exp"}),
                     id="no-exp"),
        pytest.param(_forge(_good_claims(), alg="HS512"), id="other-algorithm"),
        pytest.param("garbage", id="garbage"),
    ],
)
def test_bad_tokens_are_401(client: TestClient, token: str) -> None:
    r = client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "invalid_token"
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_a_forged_good_token_is_accepted(client: TestClient) -> None:
    # The control for the test above: the same construction with the right key passes.
    r = client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {_forge(_good_claims())}"})
    assert r.status_code == 200


def test_a_refresh_token_is_not_an_access_token(client: TestClient) -> None:
    rt = client.post(LOGIN, json={"username": "admin", "password": "admin"}).json()["refresh_token"]
    assert client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {rt}"}).status_code == 401


def test_tokens_expire_on_the_clock(client: TestClient, auth_clock: FakeClock) -> None:
    headers = login(client, "admin", "admin")
    assert client.get("/api/v1/hosts", headers=headers).status_code == 200
    auth_clock.t += 3599
    assert client.get("/api/v1/hosts", headers=headers).status_code == 200
    auth_clock.t += 1
    r = client.get("/api/v1/hosts", headers=headers)
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_refresh_rotates_and_reuse_revokes_the_family(client: TestClient,
                                                       auth_clock: FakeClock) -> None:
    rt1 = client.post(LOGIN, json=ADMIN).json()["refresh_token"]
    r = client.post(REFRESH, json={"refresh_token": rt1})
    assert r.status_code == 200
    rt2 = r.json()["refresh_token"]
    assert rt2 != rt1
    auth_clock.t += 11  # past the retry grace (refresh_grace, 10 s)
    # rt1 again: theft suspected; rt1 refused and rt2 revoked with it.
    r = client.post(REFRESH, json={"refresh_token": rt1})
    assert r.status_code == 401 and r.json()["code"] == "refresh_token_reused"
    assert client.post(REFRESH, json={"refresh_token": rt2}).status_code == 401


def test_refreshed_token_works(client: TestClient) -> None:
    rt = client.post(LOGIN, json={"username": "viewer", "password": "viewer"}).json()
    token = client.post(REFRESH, json={"refresh_token": rt["refresh_token"]}).json()["token"]
    r = client.get("/api/v1/vms", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert _claims(token)["role"] == "viewer"


def test_refresh_tokens_expire(client: TestClient, auth_clock: FakeClock) -> None:
    rt = client.post(LOGIN, json={"username": "admin", "password": "admin"}).json()["refresh_token"]
    auth_clock.t += 7 * 86400
    assert client.post(REFRESH, json={"refresh_token": rt}).status_code == 401


def test_logout_revokes(client: TestClient) -> None:
    rt = client.post(LOGIN, json={"username": "admin", "password": "admin"}).json()["refresh_token"]
    assert client.post("/api/v1/auth/logout", json={"refresh_token": rt}).status_code == 204
    assert client.post(REFRESH, json={"refresh_token": rt}).status_code == 401
    # Unknown tokens get the same answer: logout cannot probe tokens.
    assert client.post("/api/v1/auth/logout", json={"refresh_token": "nope"}).status_code == 204


def test_failed_logins_are_throttled_per_user(client: TestClient, auth_clock: FakeClock) -> None:
    for _ in range(5):
        assert client.post(LOGIN, json={"username": "admin", "password": "x"}).status_code == 401
    r = client.post(LOGIN, json={"username": "admin", "password": "admin"})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0 and r.json()["code"] == "throttled"
    # Another user from the same address is not locked out by admin's failures.
    assert client.post(LOGIN, json={"username": "viewer", "password": "viewer"}).status_code == 200
    auth_clock.t += int(r.headers["retry-after"])
    assert client.post(LOGIN, json={"username": "admin", "password": "admin"}).status_code == 200


def test_failed_logins_are_throttled_per_address(client: TestClient) -> None:
    for i in range(50):
        client.post(LOGIN, json={"username": f"user{i}", "password": "x"})
    r = client.post(LOGIN, json={"username": "admin", "password": "admin"})
    assert r.status_code == 429


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/vms/{vm}/action", {"action": "start"}),
        ("POST", "/api/v1/vms/{vm}/migrate",
         {"destination_host_id": "019e0014-ffff-7057-b326-000000000002"}),
        ("POST", "/_sim/reset", None),
        ("GET", "/_sim/state", None),
    ],
)
def test_viewers_only_read(client: TestClient, viewer: dict[str, str], admin: dict[str, str],
                           method: str, path: str, body: dict[str, str] | None) -> None:
    vm = client.get("/api/v1/vms", headers=viewer).json()["vms"][0]["id"]
    url = path.format(vm=vm)
    r = client.request(method, url, json=body, headers=viewer)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert client.request(method, url, json=body, headers=admin).status_code != 403


def test_viewer_cancel_is_forbidden(client: TestClient, viewer: dict[str, str],
                                    admin: dict[str, str]) -> None:
    vm = client.get("/api/v1/vms?status=running", headers=admin).json()["vms"][0]
    dest = "019e0014-ffff-7057-b326-000000000002"
    if vm["host_id"] == dest:
        dest = "019e0014-abcd-7057-b326-000000000001"
    mid = client.post(f"/api/v1/vms/{vm['id']}/migrate", json={"destination_host_id": dest},
                      headers=admin).json()["migration_id"]
    assert client.post(f"/api/v1/migrations/{mid}/cancel", headers=viewer).status_code == 403
    assert client.post(f"/api/v1/migrations/{mid}/cancel", headers=admin).status_code == 200


# ---------------------------------------------------------------- the service itself


def test_password_hashes_are_salted_and_verify() -> None:
    a, b = hash_password("s3cret"), hash_password("s3cret")
    assert a != b and a.startswith("scrypt$")
    assert verify_password("s3cret", a) and not verify_password("s3creT", a)
    assert not verify_password("s3cret", "md5$whatever")
    assert not verify_password("s3cret", "garbage")


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError):
        AuthService([], AuthSettings("short"))


def test_the_verified_token_cache_still_checks_expiry() -> None:
    clk = FakeClock()
    svc = AuthService([User("u", hash_password("p"), "admin")], AuthSettings(SECRET, token_ttl=10),
                      clock=clk)
    token = svc.login("u", "p", "127.0.0.1").token
    assert svc.verify(token)["sub"] == "u"
    assert svc.verify(token)["sub"] == "u"  # from the cache
    clk.t += 10
    with pytest.raises(AuthError):
        svc.verify(token)


def test_an_unknown_user_still_costs_one_password_check(
        password_checks: list[tuple[str, str]]) -> None:
    svc = AuthService([User("u", hash_password("p"), "admin")], AuthSettings(SECRET))
    for name in ("ghost", "u"):
        with pytest.raises(AuthError):
            svc.login(name, "wrong", "c")
    # One scrypt each, so response time does not reveal which usernames exist.
    checked = [encoded for _, encoded in password_checks]
    assert len(checked) == 2 and all(h.startswith("scrypt$") for h in checked)
