"""Settings: every one type-checked from every source, read the same way from each, listed.

A wrong value stops `cockpit-api serve` with one line naming the key, the source and
what is expected, exit status 2 (it was a traceback for `speed = "fast"`, a banner on
`http://127.0.0.1:abc` for `port = "abc"`); `clock_start` takes ISO 8601 in the file and
the environment too, like the flag.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from cockpit_api import cli
from cockpit_api.config import (
    SETTINGS,
    Boolean,
    ConfigError,
    Instant,
    Number,
    Settings,
    Text,
    TextList,
)

ROOT = Path(__file__).resolve().parent.parent


def _bad(kind: Any) -> tuple[str | None, Any]:
    """A wrong value for this kind: as text (flag, variable), and as a TOML value."""
    if isinstance(kind, (Number, Instant)):
        return "abc", "abc"
    if isinstance(kind, Boolean):
        return "maybe", "maybe"
    if isinstance(kind, Text):
        return ("nope", "nope") if kind.choices else (None, 5)
    assert isinstance(kind, TextList)
    return None, [1, 2]


def _toml(key: str, section: str | None, value: Any) -> str:
    rendered = value if isinstance(value, dt.datetime) else repr(value)
    if isinstance(value, str):
        rendered = '"' + value + '"'
    elif isinstance(value, bool):
        rendered = str(value).lower()
    elif isinstance(value, list):
        rendered = "[" + ", ".join(repr(v) if not isinstance(v, str) else f'"{v}"'
                                   for v in value) + "]"
    head = f"[{section}]\n" if section else ""
    return f"{head}{key} = {rendered}\n"


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str],
                    env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def accepted(*_args: object) -> None:
        raise AssertionError(f"{argv} {env} was accepted")  # never go on to serve

    monkeypatch.setattr(cli.logs, "configure", accepted)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_wrong_value_from_any_source_is_one_line_naming_key_source_and_kind(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    row = SETTINGS[name]
    key = row.key(name)
    text, native = _bad(row.kind)
    expected = f"expected {row.kind.expected}, got "
    cfg = tmp_path / "cockpit.toml"
    cfg.write_text(_toml(key, row.section, native), encoding="utf-8")
    where = f"{cfg} [{row.section}]" if row.section else str(cfg)
    err = _one_line_error(capsys, ["serve", "--config", str(cfg)], {}, monkeypatch)
    assert err.startswith(f"cockpit-api: {key} from {where}: {expected}"), err
    if text is not None:
        err = _one_line_error(capsys, ["serve"], {row.env(name): text}, monkeypatch)
        assert err.startswith(f"cockpit-api: {key} from {row.env(name)}: {expected}"), err
        monkeypatch.delenv(row.env(name))
        if row.flag is not None and isinstance(row.kind, (Number, Instant, Text)):
            err = _one_line_error(capsys, ["serve", row.flag, text], {}, monkeypatch)
            assert err.startswith(f"cockpit-api: {key} from {row.flag}: {expected}"), err
    if row.secret:
        assert "nope" not in err and "abc" not in err and "maybe" not in err


@pytest.mark.parametrize(("name", "text", "native", "value"), [
    ("clock_start", "2027-01-15T08:00:00Z", dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC),
     1_800_000_000.0),
    ("clock_start", "2027-01-15T09:00:00+01:00", 1_800_000_000, 1_800_000_000.0),
    ("clock_start", "1800000000", 1800000000.0, 1_800_000_000.0),
    ("speed", "0", 0, 0.0),
    ("speed", "2.5", 2.5, 2.5),
    ("port", "8081", 8081, 8081),
    ("access_log", "yes", True, True),
    ("cors_origins", "http://a.example, http://b.example", ["http://a.example",
                                                            "http://b.example"],
     ["http://a.example", "http://b.example"]),
    ("shutdown_timeout", "1.5", 1.5, 1.5),
])
def test_the_same_value_means_the_same_from_file_variable_and_flag(
        name: str, text: str, native: Any, value: Any, tmp_path: Path) -> None:
    row = SETTINGS[name]
    cfg = tmp_path / "cockpit.toml"
    got = []
    for file_value in (text, native):  # a TOML string, or the TOML type
        cfg.write_text(_toml(row.key(name), row.section, file_value), encoding="utf-8")
        got.append(getattr(Settings.load(cfg, env={}, state_dir=str(tmp_path)), name))
    got.append(getattr(Settings.load(env={row.env(name): text}, state_dir=str(tmp_path)), name))
    if row.flag is not None:
        got.append(getattr(Settings.load(env={}, flags={name: text},
                                         state_dir=str(tmp_path)), name))
    assert got == [value] * len(got)


def test_a_toml_datetime_clock_start_serves(tmp_path: Path) -> None:
    """The issue's file: it ended in a traceback."""
    cfg = tmp_path / "cockpit.toml"
    cfg.write_text('[sim]\nclock_start = 2027-01-15T08:00:00Z\nspeed = 0\n', encoding="utf-8")
    s = Settings.load(cfg, env={}, state_dir=str(tmp_path))
    assert (s.clock_start, s.speed) == (1_800_000_000.0, 0.0)


def test_an_unknown_key_or_section_names_where_it_is(tmp_path: Path) -> None:
    cfg = tmp_path / "cockpit.toml"
    cfg.write_text('[sim]\nspede = 2\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[sim\]: unknown setting 'spede'"):
        Settings.load(cfg, env={})
    cfg.write_text('[simulator]\nspeed = 2\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown section \[simulator\]"):
        Settings.load(cfg, env={})


def test_every_setting_has_a_row() -> None:
    """A field added to Settings needs its row in config.SETTINGS (section, check, flag)
    and a README line."""
    fields = set(Settings.rows())
    assert fields == set(SETTINGS), sorted(fields ^ set(SETTINGS))


def test_the_readme_table_lists_every_setting_with_its_variable_and_flag() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| key (section) | environment | flag |"):]
    table = table[: table.index("\n\n")]
    listed: dict[str, tuple[str, str]] = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].startswith("`[["):
            continue
        keys = re.findall(r"`([a-z_]+)`", cells[0].split("(")[0])
        for k in keys:
            listed[k] = (cells[1], cells[2])
    for name, row in SETTINGS.items():
        key = row.key(name)
        assert key in listed, f"{key} is not in the README's settings table"
        env, flag = listed[key]
        assert f"`{row.env(name)}`" in env, (key, env)
        assert (f"`{row.flag}`" in flag) if row.flag else not flag, (key, flag)
    assert set(listed) == {row.key(n) for n, row in SETTINGS.items()}


def test_the_example_file_in_the_config_docstring_loads(tmp_path: Path) -> None:
    from cockpit_api import config

    doc = config.__doc__ or ""
    example = doc[doc.index("::") + 2: doc.index("Every setting has")]
    cfg = tmp_path / "cockpit.toml"
    cfg.write_text("\n".join(line[4:] for line in example.splitlines()), encoding="utf-8")
    s = Settings.load(cfg, env={}, state_dir=str(tmp_path))
    assert (s.backend, s.clock_start, s.shutdown_timeout) == ("libvirt", 1_800_000_000.0, 3.0)
    assert [h.name for h in s.hosts] == ["vapor-node-01"] and s.users[0].role == "admin"
