"""The wheel works where it is installed: built from this checkout, installed into a clean
venv, served from another directory, it answers the reference's calls and drives libvirt's
test driver.

What it guards: the wheel once held no openapi.yaml, no scenarios/ and no
backends/libvirt/ (``cockpit-api serve`` failed with ``no scenario file default``) and
installed two top-level packages with generic names, ``handlers`` and ``backends``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cockpit_api.auth.service import hash_password
from tests.libvirt_support import NODES, node_file
from tests.seed_calls import reference_calls
from tests.serving import ROOT, free_port, serve_process

# The installs are pip's (from its cache and the configured indexes): minutes at worst.
INSTALL_TIMEOUT = 600


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(out), str(ROOT)], check=True, timeout=INSTALL_TIMEOUT,
                   capture_output=True)
    (built,) = out.glob("cockpit_api-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with the wheel (and libvirt-python, when this one has it)."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    extra = []
    if importlib.util.find_spec("libvirt") is not None:
        from importlib.metadata import version

        extra = [f"libvirt-python=={version('libvirt-python')}"]
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    str(wheel), *extra], check=True, timeout=INSTALL_TIMEOUT,
                   env=_clean_env())
    return root


def _clean_env() -> dict[str, str]:
    # Nothing of this checkout's environment may leak into the installed server.
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A directory with nothing of the checkout in it, to start the server from."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    yield d


def test_the_wheel_holds_one_package_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"cockpit_api"}, tops  # no top-level `handlers` or `backends`
    for needed in ("cockpit_api/openapi.yaml", "cockpit_api/control.yaml",
                   "cockpit_api/ops.yaml", "cockpit_api/scenarios/default.yaml",
                   "cockpit_api/scenarios/large.yaml", "cockpit_api/handlers/vms.py",
                   "cockpit_api/backends/libvirt/backend.py",
                   "cockpit_api/backends/sim/backend.py", "cockpit_api/dashboard/index.html",
                   "cockpit_api/store/migrations/script.py.mako",
                   "cockpit_api/store/migrations/versions/0001_initial.py"):
        assert needed in names, needed
    # the copies are the checkout's files, not links to them
    spec = zipfile.ZipFile(wheel).read("cockpit_api/openapi.yaml")
    assert spec == (ROOT / "openapi.yaml").read_bytes()


def test_the_installed_package_is_the_wheel_s(venv: Path, elsewhere: Path) -> None:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import cockpit_api, cockpit_api.handlers.vms as h, cockpit_api.backends.sim as s;"
         "print(cockpit_api.__file__); print(h.__file__); print(s.__file__)"],
        cwd=elsewhere, env=_clean_env(), capture_output=True, text=True, check=True)
    for line in out.stdout.split():
        assert Path(line).is_relative_to(venv), line
    bare = subprocess.run([str(venv / "bin" / "python"), "-c", "import handlers"],
                          cwd=elsewhere, env=_clean_env(), capture_output=True)
    assert bare.returncode != 0  # no generic top-level name in site-packages


def test_the_installed_mock_answers_the_reference_calls(venv: Path, elsewhere: Path) -> None:
    port = free_port()
    argv = [str(venv / "bin" / "cockpit-api"), "serve", "--port", str(port),
            "--log-level", "warning"]
    with serve_process(argv, port, cwd=elsewhere) as server, \
            httpx.Client(base_url=server.base, timeout=10) as client:
        reference_calls(client)
        page = client.get("/dashboard/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_the_installed_server_drives_libvirt_s_test_driver(venv: Path, elsewhere: Path,
                                                           tmp_path: Path) -> None:
    if importlib.util.find_spec("libvirt") is None:
        pytest.skip("libvirt-python is not installed: run lab/install-deps.sh")
    hosts = "".join(f'[[hosts]]\nname = "{n}"\nuri = "test://{node_file(n)}"\n\n'
                    for n in NODES)
    config = tmp_path / "cockpit.toml"
    config.write_text(
        f'backend = "libvirt"\n\n[libvirt]\nstate_file = "{tmp_path / "hosts.json"}"\n\n'
        f'{hosts}[[users]]\nusername = "qa"\npassword_hash = "{hash_password("qa-password")}"\n'
        'role = "admin"\n', encoding="utf-8")
    port = free_port()
    argv = [str(venv / "bin" / "cockpit-api"), "serve", "--config", str(config),
            "--port", str(port), "--log-level", "warning"]
    with serve_process(argv, port, cwd=elsewhere) as server, \
            httpx.Client(base_url=server.base + "/api/v1", timeout=10) as client:
        r = client.post("/auth/login", json={"username": "qa", "password": "qa-password"})
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        hosts_seen = client.get("/hosts", headers=auth).json()["hosts"]
        assert sorted(h["hostname"] for h in hosts_seen) == sorted(NODES)
        vms = client.get("/vms?limit=1000", headers=auth).json()["vms"]
        off = next(v for v in vms if v["status"] == "shutoff")
        r = client.post(f"/vms/{off['id']}/action", json={"action": "start"}, headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "running", r.text
        assert client.get("/", headers=auth).status_code == 404  # problem+json, not a crash
