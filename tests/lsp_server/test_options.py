"""Language server options: settings as defaults, client options on top, the kept pseudonym."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lsp_server.options import Options, load, pseudonym, with_client_options


def test_settings_give_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYWHEEL_BACKEND__URL", "http://backend.example:9000/")
    monkeypatch.setenv("FLYWHEEL_LSP__SURVIVAL_DELAYS_S", "[0.5, 0.1]")
    monkeypatch.setenv("FLYWHEEL_LSP__STATE_DIR", str(tmp_path))
    options = load(None)
    assert options.backend_url == "http://backend.example:9000"
    assert options.survival_delays_s == (0.1, 0.5)
    assert options.state_dir == tmp_path
    assert options.telemetry is True


def test_with_nothing_configured_the_options_are_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No flywheel.toml anywhere: what the settings give is what a broken flywheel.toml falls back to.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    loaded = load(None)
    assert dataclasses.replace(loaded, token="", state_dir=Path(".")) == Options()
    monkeypatch.setenv("FLYWHEEL_LSP__REWRITE_WINDOW_S", "soon")
    assert dataclasses.replace(load(None), token="", state_dir=Path(".")) == Options()


def test_client_options_override_at_top_level_or_under_flywheel(caplog: pytest.LogCaptureFixture) -> None:
    base = Options(backend_url="http://127.0.0.1:8765")
    top = with_client_options(base, {"backendUrl": "http://other:1/", "telemetry": False, "userId": "u1"})
    assert (top.backend_url, top.telemetry, top.user_id) == ("http://other:1", False, "u1")
    nested = with_client_options(base, {"flywheel": {"survivalDelaysS": [2, 1], "requestTimeoutS": 0.5}})
    assert (nested.survival_delays_s, nested.request_timeout_s) == ((1.0, 2.0), 0.5)
    # Wrong types are ignored, each on its own, with a warning; unknown keys are ignored.
    bad = with_client_options(base, {"telemetry": "no", "requestTimeoutS": 0, "other": 1, "token": "t"})
    assert (bad.telemetry, bad.request_timeout_s, bad.token) == (True, 2.0, "t")
    assert "telemetry" in caplog.text and "requestTimeoutS" in caplog.text
    assert with_client_options(base, None) == base
    # An editor's empty text field leaves the setting to flywheel.toml.
    assert with_client_options(base, {"backendUrl": "", "token": ""}) == base


def test_the_pseudonym_is_random_and_kept(tmp_path: Path) -> None:
    first = pseudonym(tmp_path / "state")
    assert len(first) == 32 and first == pseudonym(tmp_path / "state")
    assert pseudonym(tmp_path / "elsewhere") != first
    assert list((tmp_path / "state").iterdir()) == [tmp_path / "state" / "user_id"]


def test_languages_and_exclude_are_checked_each_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    chosen = with_client_options(
        Options(), {"languages": {"markdown": True, "*": False}, "exclude": ["*.md"]}
    )
    assert (chosen.languages, chosen.exclude) == ({"markdown": True, "*": False}, ("*.md",))
    bad = with_client_options(Options(), {"languages": ["python"], "exclude": "*.md"})
    assert (bad.languages, bad.exclude) == ({}, ())
    assert "languages" in caplog.text and "exclude" in caplog.text
