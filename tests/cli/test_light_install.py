"""The light install: the wheel built from this checkout, installed without its [server] extra in a
fresh virtual environment, runs `flywheel lsp` through a real LSP session over stdio, without torch.

Nothing is downloaded: the wheel is built here, and the base dependencies it names (and theirs) are
the ones this test environment already has, made visible to the fresh environment one by one through
a .pth file. So the base dependency list itself is what is checked: a module the language server
needs but the light install lacks fails the session, and a heavy module leaks only if it is named.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from lsprotocol import types
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pytest_lsp import LanguageClient

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["core", "flywheel", "lsp_server", "backend", "trainer", "simulate", "bench"]
PIP = [sys.executable, "-m", "pip"]
HEAVY = ["torch", "transformers", "trl", "peft", "matplotlib", "fastapi", "numpy"]


def build_wheel(out: Path) -> Path:
    """The wheel of a copy of the checkout (setuptools writes build/ next to the sources)."""
    source = out / "source"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            *PIP,
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(out / "wheels"),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    return next((out / "wheels").glob("flywheel-*.whl"))


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    return [
        Requirement(line.split(":", 1)[1].strip())
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**default_environment(), "extra": e}) for e in extras | {""})


def closure(base: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The installed distributions the light install would bring: `base` and what they require."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(r, set()) for r in base if applies(r, set())]
    while todo:
        requirement, _ = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found[name] = metadata.distribution(requirement.name)
        for line in found[name].requires or []:
            nested = Requirement(line)
            if applies(nested, set(requirement.extras)):
                todo.append((nested, set(nested.extras)))
    return found


def stage(distributions: dict[str, metadata.Distribution], where: Path) -> None:
    """Each distribution's top-level modules and metadata, linked into one directory."""
    where.mkdir()
    for dist in distributions.values():
        site = Path(str(dist.locate_file("")))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            target = where / top
            if (site / top).exists() and not target.exists():
                target.symlink_to(site / top)


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the light install; its python's directory."""
    work = tmp_path_factory.mktemp("light")
    wheel = build_wheel(work)
    base = requirements(wheel)
    named = {canonicalize_name(r.name) for r in base if applies(r, set())}
    assert not named & {canonicalize_name(h) for h in HEAVY}, f"the light install names {named}"
    deps = closure(base)
    assert not set(deps) & {canonicalize_name(h) for h in HEAVY}, sorted(deps)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            *PIP,
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    stage(deps, work / "deps")
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "flywheel_light_deps.pth").write_text(str(work / "deps") + "\n")
    return venv / "bin"


def light_env(tmp: Path) -> dict[str, str]:
    # Nothing of this checkout or this test environment on the path; settings of our own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FLYWHEEL_", "VIRTUAL_ENV"))}
    return dict(env, FLYWHEEL_CONFIG=str(tmp / "absent.toml"), FLYWHEEL_DATA_DIR=str(tmp / "data"))


def test_the_light_install_has_no_torch_and_says_which_extra_a_server_command_needs(
    light: Path, tmp_path: Path
) -> None:
    env = light_env(tmp_path)
    probe = "import importlib.util as u, json; print(json.dumps({m: bool(u.find_spec(m)) for m in %r}))"
    found = subprocess.run(
        [light / "python", "-c", probe % HEAVY],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(found.stdout) == dict.fromkeys(HEAVY, False)
    version = subprocess.run(
        [light / "flywheel", "--version"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("flywheel "), version.stderr
    for command in (["backend"], ["trainer", "--once"], ["up"]):
        done = subprocess.run(
            [light / "flywheel", *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert "needs the server extra: pip install 'flywheel[server]'" in done.stderr, done.stderr


async def test_flywheel_lsp_from_the_light_install_answers_a_real_session(
    light: Path, tmp_path: Path
) -> None:
    client = LanguageClient()
    await client.start_io(str(light / "flywheel"), "lsp", env=light_env(tmp_path), cwd=str(tmp_path))
    try:
        result = await client.initialize_session(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                process_id=os.getpid(),
                root_uri=tmp_path.as_uri(),
                # Nothing listens there: the session must still come up.
                initialization_options={
                    "backendUrl": "http://127.0.0.1:9",
                    "stateDir": str(tmp_path / "state"),
                },
            )
        )
        assert result.server_info is not None and result.server_info.name == "flywheel"
        assert result.capabilities.inline_completion_provider
        uri = (tmp_path / "a.py").as_uri()
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text="def f(")
            )
        )
        answer = await client.protocol.send_request_async("flywheel/status", None)
        status = answer if isinstance(answer, dict) else answer._asdict()
        # The session ran (the backend was asked) and loaded none of the trainer's modules.
        assert status["ready"] is True and status["backend_ok"] is False
        assert status["heavy_modules"] == []
    finally:
        await client.shutdown_session()
