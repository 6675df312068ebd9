"""flywheel.toml: unknown keys and wrong values refused in one line naming the key; a workspace file
the user has not trusted cannot say where the language server sends code and tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, load_settings


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository the user opened (the working directory) and an empty user config dir."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("FLYWHEEL_BACKEND__URL", "FLYWHEEL_BACKEND__TOKEN", "FLYWHEEL_BACKEND__PORT"):
        monkeypatch.delenv(name, raising=False)
    return repo


def user_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "flywheel" / "flywheel.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_wrong_value_is_one_line_naming_the_file_and_key(workspace: Path) -> None:
    (workspace / "flywheel.toml").write_text('[backend]\nport = "abc"\n')
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == 'flywheel.toml: backend.port: expected an integer, got "abc"'


def test_a_wrong_environment_value_names_the_variable(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_MODEL__TEMPERATURE", "warm")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == 'FLYWHEEL_MODEL__TEMPERATURE: model.temperature: expected a number, got "warm"'


def test_an_unknown_key_is_refused_with_the_nearest_known_one(workspace: Path) -> None:
    (workspace / "flywheel.toml").write_text("[backend]\nprot = 9000\n")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == "flywheel.toml: unknown key backend.prot (did you mean backend.port?)"
    (workspace / "flywheel.toml").write_text("[trainer.guards]\nmax_user_shares = 0.1\n")
    with pytest.raises(ConfigError, match=r"did you mean trainer\.guards\.max_user_share\?"):
        load_settings()
    (workspace / "flywheel.toml").write_text("[nothing_like_it]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key nothing_like_it \(known: backend, "):
        load_settings()


def test_free_form_tables_take_any_key(workspace: Path) -> None:
    # An objective's overrides are its own dataclass's fields, not ours.
    (workspace / "flywheel.toml").write_text("[trainer.pg]\nkl_coef = 0.1\n")
    assert load_settings().trainer.pg == {"kl_coef": 0.1}


def test_an_untrusted_workspace_file_cannot_redirect_the_language_server(
    tmp_path: Path, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user_file(tmp_path, '[backend]\nurl = "http://mine.example:8765"\n[lsp]\ntelemetry = false\n')
    (workspace / "flywheel.toml").write_text(
        '[backend]\nurl = "https://collector.example"\ntoken = "theirs"\n'
        '[lsp]\ntelemetry = true\ndebounce_ms = 5\n[model]\ntemperature = 0.2\n'
    )
    settings = load_settings(trust_workspace=False)
    # Where code goes, the token and telemetry come from the user's own file; the rest applies.
    assert settings.backend.base_url == "http://mine.example:8765"
    assert settings.backend.token == ""
    assert settings.lsp.telemetry is False
    assert settings.lsp.debounce_ms == 5
    assert settings.model.temperature == 0.2
    assert "ignoring backend.url, backend.token, lsp.telemetry" in caplog.text
    assert "trusted_configs" in caplog.text
    # A host alone redirects too (the URL is built from it).
    (workspace / "flywheel.toml").write_text('[backend]\nhost = "collector.example"\n')
    assert load_settings(trust_workspace=False).backend.base_url == "http://mine.example:8765"
    # The CLI's own commands, run by the user in that directory, take the file whole.
    assert load_settings().backend.base_url == "http://collector.example:8765"


def test_a_trusted_workspace_file_applies_whole(tmp_path: Path, workspace: Path) -> None:
    (workspace / "flywheel.toml").write_text('[backend]\nurl = "https://team.example"\n')
    user_file(tmp_path, f'trusted_configs = ["{workspace / "flywheel.toml"}"]\n')
    assert load_settings(trust_workspace=False).backend.base_url == "https://team.example"


def test_a_file_the_user_names_is_trusted(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "team.toml"
    named.write_text('[backend]\nurl = "https://team.example"\n')
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(named))
    (workspace / "flywheel.toml").write_text('[backend]\nurl = "https://collector.example"\n')
    assert load_settings(trust_workspace=False).backend.base_url == "https://team.example"
