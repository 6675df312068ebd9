"""What the language server may send: the languages the backend's model serves (or the user turned
on), never an excluded path; and what it says about the backend (ok, unauthorized, unreachable).

Over real stdio (pytest-lsp); the backend is the contract-speaking one of test_server.py, or the
real backend (tiny model) where its own answers matter: its /v1/model and its 401.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import test_server
from conftest import RunningBackend, start_backend, stop_backend
from lsprotocol import types
from pytest_lsp import LanguageClient
from test_server import WireBackend, closed_port_url, complete, request, start

from core.local_tokens import CLIENT, read_token
from lsp_server.gate import enabled_languages, excluded, language_enabled
from lsp_server.protocol import DID_CHANGE_STATUS

client = test_server.client
wire_backend = test_server.backend

DOCUMENT = "x = \n"


def test_default_exclusions_and_the_users_globs() -> None:
    root = "/home/me/project"
    for name in (".env", ".env.production", "prod.env", "server.pem", "tls.key", "id_rsa", "id_ed25519.pub"):
        assert excluded(f"file://{root}/{name}", (), root), name
    assert excluded("file:///home/me/.ssh/config", (), root)
    assert excluded("file:///home/me/.aws/credentials", (), root)
    for name in ("app.py", "environment.py", "keys.py", "README.md"):
        assert not excluded(f"file://{root}/{name}", (), root), name
    # The user's globs: a name anywhere, or a path relative to the workspace root (or absolute).
    assert excluded(f"file://{root}/notes.md", ("*.md",), root)
    assert excluded(f"file://{root}/secrets/db.py", ("secrets/*",), root)
    assert excluded(f"file://{root}/secrets/db.py", ("/home/me/*/secrets/*",), root)
    assert not excluded(f"file://{root}/src/secrets.py", ("secrets/*",), root)
    # Percent-encoded URIs are decoded first.
    assert excluded(f"file://{root}/my%20dir/.env", (), root)


def test_languages_follow_the_backend_then_the_user() -> None:
    served = ["python"]
    assert language_enabled("python", served, {}) and not language_enabled("markdown", served, {})
    assert language_enabled("markdown", served, {"markdown": True})
    assert not language_enabled("python", served, {"python": False})
    assert not language_enabled("python", served, {"*": False}) and language_enabled(
        "lua", served, {"*": True}
    )
    assert enabled_languages(served, {"lua": True, "python": False}) == ["lua"]
    assert enabled_languages(["python", "go"], {"*": False, "go": True}) == ["go"]


def collect_status(client: LanguageClient) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    @client.feature(DID_CHANGE_STATUS)
    def _did_change_status(params: Any) -> None:
        seen.append(params if isinstance(params, dict) else params._asdict())

    return seen


async def wait_for(check: Any, what: str, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


def open_as(client: LanguageClient, uri: str, language_id: str, text: str = DOCUMENT) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)
        )
    )


async def test_only_served_or_enabled_languages_and_never_excluded_paths_reach_the_backend(
    client: LanguageClient, tmp_path: Path, wire_backend: WireBackend
) -> None:
    seen = collect_status(client)
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=wire_backend.url, debounceMs=0, exclude=["private/*"])
    await wait_for(lambda: seen, "the first flywheel/didChangeStatus")
    assert seen[0] == {"backend": "ok", "languages": ["python"]}

    code, notes, env = (ws / "a.py").as_uri(), (ws / "notes.md").as_uri(), (ws / ".env").as_uri()
    private = (ws / "private" / "b.py").as_uri()
    open_as(client, code, "python")
    open_as(client, notes, "markdown")
    open_as(client, env, "python", "API_KEY = \n")  # a .env opened as Python is still a .env
    open_as(client, private, "python")
    for uri in (notes, env, private):
        assert (await complete(client, uri, 0, 4)).items == ()
    assert wire_backend.completions == []
    assert len((await complete(client, code, 0, 4)).items) == 1
    assert [c.context.path for c in wire_backend.completions] == ["a.py"]

    status = await request(client, "flywheel/status")
    assert (status["backend"], status["languages"], status["served_languages"]) == (
        "ok",
        ["python"],
        ["python"],
    )
    assert ".env" in status["exclude"] and "private/*" in status["exclude"]
    assert status["gated_requests"] == 3
    # Of the excluded files not even the text is kept.
    assert (status["open_documents"], status["ignored_documents"]) == (2, 2)

    # Per language, from the editor's settings: Markdown on, Python off.
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(
            settings={"flywheel": {"languages": {"markdown": True, "python": False}}}
        )
    )
    await wait_for(lambda: len(seen) == 2, "the languages' change")
    assert seen[1] == {"backend": "ok", "languages": ["markdown"]}
    assert len((await complete(client, notes, 0, 4)).items) == 1
    assert (await complete(client, code, 0, 4)).items == ()
    assert [c.context.path for c in wire_backend.completions] == ["a.py", "notes.md"]
    # Nothing was recorded of the refused documents either: no event names them.
    await request(client, "flywheel/flush")
    served_ids = {e["completion_id"] for e in wire_backend.events.values()}
    assert len(served_ids) <= 2


async def test_a_backend_serving_other_languages_is_followed(
    client: LanguageClient, tmp_path: Path, wire_backend: WireBackend
) -> None:
    wire_backend.languages = ["lua", "go"]
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=wire_backend.url, debounceMs=0, languages={"go": False})
    status = await request(client, "flywheel/status")
    assert (status["backend"], status["languages"]) == ("ok", ["lua"])
    open_as(client, (ws / "a.py").as_uri(), "python")
    open_as(client, (ws / "a.lua").as_uri(), "lua")
    assert (await complete(client, (ws / "a.py").as_uri(), 0, 4)).items == ()
    assert len((await complete(client, (ws / "a.lua").as_uri(), 0, 4)).items) == 1


async def test_an_unreachable_backend_is_said_so(client: LanguageClient, tmp_path: Path) -> None:
    seen = collect_status(client)
    await start(client, tmp_path / "ws", backendUrl=closed_port_url())
    status = await request(client, "flywheel/status")
    assert (status["backend"], status["backend_ok"]) == ("unreachable", False)
    await wait_for(lambda: seen, "flywheel/didChangeStatus")
    assert seen[-1] == {"backend": "unreachable", "languages": []}
    assert client.messages == []  # an outage is no popup


async def test_a_backend_that_comes_up_later_is_found_without_a_keystroke(
    client: LanguageClient, tmp_path: Path, wire_backend: WireBackend
) -> None:
    # An editor opened before `flywheel up`: nothing is attached until the languages are known, so
    # no completion request would ever ask again; the server does, on its own.
    wire_backend.down = True
    seen = collect_status(client)
    await start(client, tmp_path / "ws", backendUrl=wire_backend.url)
    await wait_for(lambda: seen, "flywheel/didChangeStatus")
    assert seen == [{"backend": "unreachable", "languages": []}]
    wire_backend.down = False
    await wait_for(lambda: len(seen) == 2, "the backend to be found", 10)
    assert seen[1] == {"backend": "ok", "languages": ["python"]}


@pytest.fixture
def real_backend(tiny_model_dir: Path, tmp_path: Path) -> Any:
    running = start_backend(
        tiny_model_dir, tmp_path / "backend", FLYWHEEL_MODEL__LANGUAGES='["python", "lua"]'
    )
    yield running
    stop_backend(running)


async def test_a_refused_token_is_unauthorized_not_unreachable_and_a_good_one_fixes_it(
    client: LanguageClient, tmp_path: Path, real_backend: RunningBackend
) -> None:
    seen = collect_status(client)
    ws = tmp_path / "ws"
    await start(client, ws, backendUrl=real_backend.url, token="fw_wrong-token", debounceMs=0)
    status = await request(client, "flywheel/status")
    assert (status["backend"], status["backend_ok"]) == ("unauthorized", False)
    assert "401" in status["last_backend_error"]
    await wait_for(lambda: seen, "flywheel/didChangeStatus")
    assert seen == [{"backend": "unauthorized", "languages": []}]
    # Said once in words (window/showMessage), whatever the keystrokes that follow.
    uri = (ws / "a.py").as_uri()
    open_as(client, uri, "python")
    for _ in range(3):
        assert (await complete(client, uri, 0, 4)).items == ()
    assert len(client.messages) == 1
    assert client.messages[0].type == types.MessageType.Error
    assert "unauthorized" in client.messages[0].message and "unreachable" not in client.messages[0].message

    # The right token: ok, with the languages the real backend's configuration names.
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"token": read_token(real_backend.data_dir, CLIENT)})
    )
    await wait_for(lambda: seen[-1]["backend"] == "ok", "the backend to take the token", 30)
    assert seen[-1] == {"backend": "ok", "languages": ["lua", "python"]}
    status = await request(client, "flywheel/status")
    assert (status["backend"], status["served_languages"]) == ("ok", ["python", "lua"])
    assert len(client.messages) == 1
