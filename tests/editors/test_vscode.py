"""The VS Code extension in a real VS Code: code-server (VS Code served to a browser, from npm:
`make code-server`) driven by Playwright in Debian's Chromium, with the .vsix `make vscode` built,
the real language server and the real backend (tiny model trained by this test session).

Keys are pressed in the browser as a person would press them; what the backend recorded is read
from its SQLite file, what the editor holds from the saved file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from backend_events import completions, of_kind, wait_for_events, wait_until
from conftest import RunningBackend, free_port

from core.local_tokens import CLIENT, read_token

ROOT = Path(__file__).resolve().parents[2]
EXTENSION = ROOT / "editor_clients" / "vscode"
CODE_SERVER = EXTENSION / ".code-server" / "node_modules" / "code-server" / "out" / "node" / "entry.js"
VSIXES = sorted(EXTENSION.glob("*.vsix"), key=lambda p: p.stat().st_mtime)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
FLYWHEEL = Path(sys.executable).parent / "flywheel"
# Where the screenshot goes when asked (README's docs/screenshots/); otherwise the test's tmp dir.
SCREENSHOT_DIR = os.environ.get("FLYWHEEL_SCREENSHOTS")

pytestmark = [
    pytest.mark.skipif(not CODE_SERVER.exists(), reason="code-server is not installed (make code-server)"),
    pytest.mark.skipif(not VSIXES, reason="no .vsix (make vscode builds it)"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make chromium)"),
    pytest.mark.skipif(not FLYWHEEL.exists(), reason="no flywheel executable in the venv"),
    # The tiny model is trained once per session in fixture setup: only the test itself is timed.
    pytest.mark.timeout(240, func_only=True),
]

DOCUMENT = "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n        data = \n"
LAST_LINE = 6  # 1-based: "        data = "
PREFIX = "        data = "
GHOST = ".monaco-editor .ghost-text-decoration"
# Inline suggestions only: no suggest widget in the way of Tab and Escape.
EDITOR_SETTINGS = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "workbench.colorTheme": "Default Dark Modern",
    "security.workspace.trust.enabled": False,
    "editor.fontSize": 16,
    "editor.minimap.enabled": False,
    "editor.inlineSuggest.enabled": True,
    "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.parameterHints.enabled": False,
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "update.mode": "none",
}


class VsCode:
    """code-server with the extension, one workspace, and a browser page on it."""

    def __init__(self, page: Any, workspace: Path, user_dir: Path, backend: RunningBackend) -> None:
        self.page = page
        self.workspace = workspace
        self.user_dir = user_dir
        self.backend = backend

    def press(self, *keys: str) -> None:
        for key in keys:
            self.page.keyboard.press(key)

    def command(self, title: str) -> None:
        """A command from the palette, by its title."""
        self.press("F1")
        box = self.page.locator(".quick-input-widget input.input")
        box.wait_for(state="visible")
        box.fill(f">{title}")
        self.page.locator(".quick-input-list .monaco-list-row").first.wait_for(state="visible")
        self.press("Enter")

    def open(self, name: str) -> None:
        """From the Explorer (Quick Open searches with ripgrep, which this code-server leaves out)."""
        self.page.locator(f'.explorer-folders-view .monaco-list-row[aria-label="{name}"]').dblclick()
        self.page.locator(f'.tab.active[aria-label^="{name}"]').wait_for(state="visible")
        self.page.locator(".monaco-editor .view-lines").first.click()

    def go_to_line_end(self, line: int) -> None:
        self.press("Control+G")
        self.page.keyboard.type(str(line))
        self.press("Enter", "End")

    def status(self) -> str:
        item = self.page.locator('.statusbar-item:has-text("Flywheel")').first
        return item.inner_text() if item.count() else ""

    def ghost(self) -> str:
        parts = self.page.locator(GHOST).all_inner_texts()
        return "".join(parts).replace("\u00a0", " ")

    def saved_line(self, name: str, line: int) -> str:
        """The line as the editor holds it, read from the file once saved."""
        path = self.workspace / name
        before = path.stat().st_mtime_ns
        self.press("Control+S")
        wait_until(lambda: path.stat().st_mtime_ns != before, 10, "the file to be saved")
        time.sleep(0.2)  # written in one go, but let the writer finish
        return path.read_text().splitlines()[line - 1]

    def user_settings(self) -> dict[str, Any]:
        return json.loads((self.user_dir / "User" / "settings.json").read_text())

    def pick(self, label: str) -> None:
        """The entry of an open quick pick that starts with `label`."""
        self.page.locator(".quick-input-list .monaco-list-row", has_text=label).first.click()

    def extension_log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.user_dir.glob("logs/**/Flywheel.log"))


@contextlib.contextmanager
def vscode(tmp_path: Path, backend: RunningBackend, settings: dict[str, Any]) -> Iterator[VsCode]:
    """code-server on a free port with the .vsix installed and `settings` as the user's, and a
    headless Chromium on the workspace."""
    from playwright.sync_api import sync_playwright

    workspace = tmp_path / "work"
    workspace.mkdir()
    (workspace / "config.py").write_text(DOCUMENT)
    (workspace / "notes.md").write_text("# Notes\n\nThe config is read \n")
    (workspace / ".env").write_text("DATABASE_URL=postgres://app@db/app\nAPI_KEY=\n")
    user_dir, extensions_dir = tmp_path / "vscode-user", tmp_path / "vscode-extensions"
    (user_dir / "User").mkdir(parents=True)
    (user_dir / "User" / "settings.json").write_text(
        json.dumps(
            {
                **EDITOR_SETTINGS,
                "flywheel.serverPath": str(FLYWHEEL),
                "flywheel.backendUrl": backend.url,
                **settings,
            }
        )
    )
    env = {
        **os.environ,
        **{
            name: str(tmp_path / "xdg" / name.lower())
            for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME")
        },
        "XDG_STATE_HOME": str(tmp_path / "xdg" / "state"),
        "FLYWHEEL_CONFIG": str(tmp_path / "absent.toml"),
        "FLYWHEEL_LSP__DEBOUNCE_MS": "0",
        "FLYWHEEL_LSP__FLUSH_INTERVAL_S": "0.2",
        "FLYWHEEL_LSP__STATE_DIR": str(tmp_path / "lsp-state"),
        "HF_HUB_OFFLINE": "1",
    }
    node = [
        "node",
        str(CODE_SERVER),
        "--user-data-dir",
        str(user_dir),
        "--extensions-dir",
        str(extensions_dir),
    ]
    subprocess.run(
        [*node, "--install-extension", str(VSIXES[-1])], env=env, check=True, capture_output=True, timeout=60
    )
    port = free_port()
    log = (tmp_path / "code-server.log").open("wb")
    server = subprocess.Popen(
        [*node, "--auth", "none", "--bind-addr", f"127.0.0.1:{port}", "--disable-update-check",
         "--disable-workspace-trust", "--disable-getting-started-override", str(workspace)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/healthz"), 30, "code-server to listen")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 560})
            page.goto(f"{url}/?folder={workspace}")
            page.locator(".monaco-workbench").wait_for(state="visible", timeout=60_000)
            try:
                yield VsCode(page, workspace, user_dir, backend)
            except BaseException:
                page.screenshot(path=str(tmp_path / "failure.png"))
                _print_logs(tmp_path, user_dir)
                raise
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _print_logs(tmp_path: Path, user_dir: Path) -> None:
    print((tmp_path / "code-server.log").read_text(errors="replace")[-4000:])
    for path in sorted(user_dir.glob("logs/**/*Flywheel*.log")):
        print(f"--- {path}\n{path.read_text(errors='replace')[-6000:]}")


def fresh_suggestion(editor: VsCode, known: set[str], good: Any, attempts: int = 20) -> tuple[str, str, str]:
    """Types a character and takes it back until a new suggestion `good` likes is on screen;
    returns its completion_id and text as the backend stored them, and what was typed ("h" or "")."""
    for attempt in range(attempts):
        if attempt % 2 == 0:
            editor.page.keyboard.type("h")
        else:
            editor.press("Backspace")
        with contextlib.suppress(AssertionError):
            wait_until(lambda: editor.ghost().strip(), 10, "ghost text")
            new = [(c, t) for c, t in completions(editor.backend.data_dir) if c not in known]
            if new and good(new[-1][1]) and editor.ghost() == new[-1][1]:
                return (*new[-1], "h" if attempt % 2 == 0 else "")
    raise AssertionError("the model never proposed a usable suggestion")


def word_then_more(text: str) -> bool:
    """One line that accepting a word leaves something of (a word, then something else)."""
    return "\n" not in text and "\t" not in text and text.isascii() and re.match(r"\w+\W", text) is not None


def test_set_token_ghost_text_accept_word_accept_and_dismiss_in_vscode(
    backend: RunningBackend, tmp_path: Path
) -> None:
    # A wrong token left in settings.json by an older version: moved to the secret storage and
    # removed from settings.json; the backend refuses it, which shows as unauthorized.
    with vscode(tmp_path, backend, {"flywheel.token": "not-the-token"}) as editor:
        editor.open("config.py")
        wait_until(lambda: "unauthorized" in editor.status(), 60, "the status bar to say unauthorized")
        assert "unreachable" not in editor.status()
        assert "flywheel.token" not in editor.user_settings()

        # The one message's Set Token action asks for the token (a password box) and keeps it.
        toast = editor.page.locator(".notifications-toasts .notification-toast", has_text="unauthorized")
        toast.wait_for(state="visible", timeout=10_000)
        time.sleep(1)  # the language server's own words on it come right after: said once, not twice
        assert toast.count() == 1
        toast.locator(".monaco-button", has_text="Set Token").click()
        box = editor.page.locator(".quick-input-widget input.input")
        box.wait_for(state="visible")
        assert box.get_attribute("type") == "password"
        box.fill(read_token(backend.data_dir, CLIENT))
        editor.press("Enter")
        wait_until(lambda: "unauthorized" not in editor.status(), 30, "the status bar to clear")
        assert "flywheel.token" not in editor.user_settings()

        # Typing shows ghost text after the cursor: a suggestion of the backend's model.
        editor.page.locator(".monaco-editor .view-lines").first.click()
        editor.go_to_line_end(LAST_LINE)
        cid, text, typed = fresh_suggestion(editor, set(), word_then_more)
        screenshot = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
        screenshot.mkdir(parents=True, exist_ok=True)
        editor.page.screenshot(path=str(screenshot / "vscode-ghost-text.png"))
        assert of_kind(wait_for_events(backend.data_dir, cid, ["shown"]), "shown")

        # Ctrl+Right accepts the next word: it is in the file, the rest stays on screen, the
        # length reaches the backend as a partial acceptance.
        editor.press("Control+ArrowRight")
        wait_until(lambda: editor.ghost() and editor.ghost() != text, 5, "the rest of the suggestion")
        rest = editor.ghost()
        assert text.endswith(rest) and 0 < len(rest) < len(text)
        word = text[: len(text) - len(rest)]
        found = wait_for_events(backend.data_dir, cid, ["shown", "partially_accepted"])
        assert [e["accepted_chars"] for e in of_kind(found, "partially_accepted")] == [len(word)]

        # Tab accepts the rest: the whole suggestion is in the file, accepted once.
        editor.press("Tab")
        wait_until(lambda: not editor.ghost(), 5, "the ghost text to go")
        assert editor.saved_line("config.py", LAST_LINE) == PREFIX + typed + text
        found = wait_for_events(backend.data_dir, cid, ["accepted"])
        assert len(of_kind(found, "accepted")) == 1

        # A fresh suggestion dismissed with Escape is a rejection, and leaves the file as it was.
        editor.press("Enter")
        editor.page.keyboard.type(PREFIX)
        before = {c for c, _ in completions(backend.data_dir)}
        other, _, _ = fresh_suggestion(editor, before, lambda t: bool(t.strip()))
        editor.press("Escape")
        wait_until(lambda: not editor.ghost(), 5, "the ghost text to go")
        found = wait_for_events(backend.data_dir, other, ["shown", "rejected"])
        assert not of_kind(found, "accepted") and not of_kind(found, "partially_accepted")

        # Markdown, a language the model does not serve, and a .env file: typing asks for
        # nothing, and the status bar says so.
        served = len(completions(backend.data_dir))
        for name, line in (("notes.md", 3), (".env", 2)):
            editor.open(name)
            editor.go_to_line_end(line)
            editor.page.keyboard.type("fro", delay=100)
            time.sleep(2)
            assert len(completions(backend.data_dir)) == served and not editor.ghost(), name
            assert (
                editor.page.locator('.statusbar-item:has-text("Flywheel") .codicon-circle-slash').count() == 1
            )

        # Manual mode (an entry of Flywheel: Toggle): typing asks for nothing; Alt+\ does.
        seen = editor.extension_log().count("settings changed")
        editor.command("Flywheel: Toggle")
        editor.pick("Suggest only when asked")
        wait_until(lambda: editor.extension_log().count("settings changed") > seen, 15, "the new settings")
        assert editor.user_settings()["flywheel.trigger"] == "manual"
        editor.open("config.py")
        editor.go_to_line_end(LAST_LINE)
        editor.page.keyboard.type("ab", delay=100)
        time.sleep(2)
        assert len(completions(backend.data_dir)) == served and not editor.ghost()
        for _ in range(5):
            editor.press("Alt+Backslash")
            with contextlib.suppress(AssertionError):
                wait_until(lambda: editor.ghost().strip(), 10, "ghost text on Alt+\\")
                break
            editor.page.keyboard.type("c")
        assert editor.ghost().strip() and len(completions(backend.data_dir)) > served
