"""Tabby's own client, `tabby-agent` from npm (`make tabby-agent`), pointed at a real Flywheel backend
(tiny model) as its Tabby server: its completions are served by Flywheel and its events become
episodes with rewards.

npm's tabby-agent (1.5.0, the only version published there) speaks two protocols on stdio: LSP
(`--lsp --stdio`: textDocument/completion; it sends no events over LSP) and the JSON-lines protocol that
Tabby's Vim and IntelliJ plugins drive (provideCompletions, postEvent). Both are driven here. Its
configuration is read from ~/.tabby-client/agent/config.toml, as a user writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningBackend, start_backend, stop_backend
from lsprotocol import types
from pytest_lsp import LanguageClient

from core.local_tokens import CLIENT, read_token

AGENT = Path(__file__).parent / "tabby_agent" / "node_modules" / "tabby-agent" / "dist" / "cli.js"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None or not AGENT.exists(), reason="no tabby-agent: run `make tabby-agent`"),
    pytest.mark.timeout(120, func_only=True),
]

DOCUMENT = (
    "import os\n\n\ndef read_config(path):\n"
    "    with open(path) as handle:\n        data = \n    return data\n"
)
CURSOR = (5, len("        data = "))  # 0-based line and character


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBackend]:
    running = start_backend(tiny_model_dir, tmp_path_factory.mktemp("tabby") / "state")
    yield running
    stop_backend(running)


@pytest.fixture
def agent_env(backend: RunningBackend, tmp_path: Path) -> dict[str, str]:
    """A home whose Tabby configuration names the backend and a Flywheel client token."""
    return tabby_home(backend, tmp_path / "home", read_token(backend.data_dir, CLIENT))


def tabby_home(backend: RunningBackend, home: Path, token: str) -> dict[str, str]:
    # The agent's own usage reports stay off from its first moment: a test sends nothing out.
    config = home / ".tabby-client" / "agent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f'[server]\nendpoint = "{backend.url}"\ntoken = "{token}"\n\n'
        "[anonymousUsageTracking]\ndisable = true\n"
    )
    return {**os.environ, "HOME": str(home), "USERPROFILE": str(home)}


def rows(backend: RunningBackend, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    uri = f"file:{backend.data_dir / 'flywheel.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as db:
        return db.execute(sql, params).fetchall()


async def episode(backend: RunningBackend, completion_id: str, timeout_s: float = 20) -> tuple[str, float]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = rows(backend, "SELECT outcome, reward FROM episodes WHERE completion_id = ?", completion_id)
        if found:
            return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no episode for {completion_id}")


def document(attempt: int) -> tuple[str, int]:
    """The test document, varied per attempt (the tiny model abstains now and then), and the
    cursor's offset in it."""
    text = DOCUMENT.replace("data = ", "data = " + "x" * attempt, 1)
    line, character = CURSOR
    offset = sum(len(row) + 1 for row in text.split("\n")[:line]) + character + attempt
    return text, offset


async def test_lsp_completions_are_served_by_flywheel(
    backend: RunningBackend, agent_env: dict[str, str]
) -> None:
    client = LanguageClient()
    await client.start_io(NODE, str(AGENT), "--lsp", "--stdio", env=agent_env)
    try:
        await client.initialize_session(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                client_info=types.ClientInfo(name="flywheel-test", version="0"),
            )
        )
        items: list[types.CompletionItem] = []
        for attempt in range(15):
            uri = f"file:///work/config{attempt}.py"
            text, _ = document(attempt)
            client.text_document_did_open(
                types.DidOpenTextDocumentParams(
                    text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
                )
            )
            answer = await client.text_document_completion_async(
                types.CompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=types.Position(line=CURSOR[0], character=CURSOR[1] + attempt),
                )
            )
            assert isinstance(answer, types.CompletionList)
            if items := answer.items:
                break
        assert items, "no completion shown in fifteen tries"
        completion_id = items[0].data["completionId"]
        assert items[0].label_details is not None and items[0].label_details.description == "Tabby"
        recorded = rows(
            backend,
            "SELECT client, language, context FROM completions WHERE completion_id = ?",
            completion_id,
        )
        assert [(c, lang) for c, lang, _ in recorded] == [("tabby", "python")]
        assert json.loads(recorded[0][2])["prefix"].endswith("data = " + "x" * attempt)
        await client.shutdown_session()
    finally:
        await client.stop()


class JsonLines:
    """Tabby's agent in its default mode: one JSON array per line each way, [id, {func, args}]
    answered by [id, result]; [0, event] lines are the agent's own notifications."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.ids = itertools.count(1)

    async def call(self, func: str, *args: Any) -> Any:
        request_id = next(self.ids)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(
            (json.dumps([request_id, {"func": func, "args": list(args)}]) + "\n").encode()
        )
        await self.process.stdin.drain()
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout=60)
            assert line, "the agent exited"
            answer_id, result = json.loads(line)
            if answer_id == request_id:
                return result


@contextlib.asynccontextmanager
async def json_lines_agent(env: dict[str, str]) -> AsyncIterator[JsonLines]:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, str(AGENT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        yield JsonLines(process)
    finally:
        process.terminate()
        await process.wait()


@pytest.fixture
async def agent(agent_env: dict[str, str]) -> AsyncIterator[JsonLines]:
    async with json_lines_agent(agent_env) as running:
        yield running


async def test_a_wrong_token_is_unauthorized_not_unreachable(backend: RunningBackend, tmp_path: Path) -> None:
    async with json_lines_agent(tabby_home(backend, tmp_path / "home", "fw_not-a-token")) as wrong:
        assert await wrong.call("initialize", {"clientProperties": {"session": {"client": "flywheel-test"}}})
        assert await wrong.call("getStatus") == "unauthorized"


async def shown_completion(agent: JsonLines, first: int = 0) -> tuple[str, str]:
    """A completion with text, for a document not asked about before (the agent caches answers)."""
    for attempt in range(first, first + 15):
        text, offset = document(attempt)
        answer = await agent.call(
            "provideCompletions",
            {
                "filepath": "/work/config.py",
                "language": "python",
                "text": text,
                "position": offset,
                "manually": True,
            },
        )
        if answer and answer["choices"]:
            return answer["id"], answer["choices"][0]["text"]
    raise AssertionError("no completion shown in fifteen tries")


async def server_config(home: Path, endpoint: str, timeout_s: float = 10) -> Any:
    """What the agent keeps of the server's own settings (its data.json), once it has asked."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            kept = json.loads((home / ".tabby-client" / "agent" / "data.json").read_text())
            if endpoint in kept.get("serverConfig", {}):
                return kept["serverConfig"][endpoint]
        await asyncio.sleep(0.1)
    raise AssertionError("the agent never asked for the server's settings")


async def test_events_of_tabbys_plugins_become_episodes_with_rewards(
    backend: RunningBackend, agent: JsonLines, agent_env: dict[str, str]
) -> None:
    assert await agent.call("initialize", {"clientProperties": {"session": {"client": "flywheel-test"}}})
    # Connected: /v1/health answered with the client token.
    assert await agent.call("getStatus") == "ready"
    # It then asked /v1beta/server_setting and keeps the answer (whatever its own config says):
    # send TabbyML no usage data.
    kept = await server_config(Path(agent_env["HOME"]), backend.url)
    assert kept == {"anonymousUsageTracking": {"disable": True}}

    accepted, _ = await shown_completion(agent)
    assert rows(backend, "SELECT client FROM completions WHERE completion_id = ?", accepted) == [("tabby",)]
    for event in ({"type": "view"}, {"type": "select", "select_kind": "line"}, {"type": "select"}):
        assert await agent.call("postEvent", {**event, "completion_id": accepted, "choice_index": 0})
    kinds = sorted(k for (k,) in rows(backend, "SELECT kind FROM events WHERE completion_id = ?", accepted))
    assert kinds == ["accepted", "partially_accepted", "shown"]
    # Accepted, and kept whole as far as Tabby can say (it sends no survival checks).
    assert await episode(backend, accepted) == ("accepted", 0.75)

    dismissed, _ = await shown_completion(agent, first=100)
    assert dismissed != accepted
    for kind in ("view", "dismiss"):
        assert await agent.call("postEvent", {"type": kind, "completion_id": dismissed, "choice_index": 0})
    assert await episode(backend, dismissed) == ("rejected", -0.25)
    assert await agent.call("finalize")
