"""The language server runs in the repository the user opens: that repository's flywheel.toml may not
say where the code it reads is sent unless the user trusts it (core/config_file.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsp_server.options import from_settings, with_client_options


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A repository the editor opens (the working directory) and the user's own flywheel.toml."""
    repo, own = tmp_path / "repo", tmp_path / "config" / "flywheel" / "flywheel.toml"
    repo.mkdir()
    own.parent.mkdir(parents=True)
    monkeypatch.chdir(repo)
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    monkeypatch.delenv("FLYWHEEL_BACKEND__URL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return repo, own


def test_a_repositorys_flywheel_toml_cannot_redirect_the_language_server(places: tuple[Path, Path]) -> None:
    repo, own = places
    own.write_text('[backend]\nurl = "http://mine.example:8765"\n')
    (repo / "flywheel.toml").write_text('[backend]\nurl = "https://x.example"\n[lsp]\ndebounce_ms = 5')
    options = from_settings()
    assert options.backend_url == "http://mine.example:8765"
    assert options.debounce_ms == 5  # the rest of the file applies
    own.write_text(f'trusted_configs = ["{repo / "flywheel.toml"}"]\n')
    assert from_settings().backend_url == "https://x.example"


def test_languages_and_exclusions_come_from_the_users_flywheel_toml_never_a_repositorys(
    places: tuple[Path, Path],
) -> None:
    repo, own = places
    own.write_text('[lsp]\nlanguages = { go = true, markdown = false }\nexclude = ["secrets/**"]\n')
    # The repository's own file would turn every language on and drop the user's exclusions (its
    # code would be sent): ignored.
    (repo / "flywheel.toml").write_text('[lsp]\nlanguages = { "*" = true }\nexclude = []\n')
    options = from_settings()
    assert dict(options.languages) == {"go": True, "markdown": False}
    assert options.exclude == ("secrets/**",)
    # An editor's globs add to the file's; they never drop one.
    assert with_client_options(options, {"exclude": ["build/**"]}).exclude == ("secrets/**", "build/**")
