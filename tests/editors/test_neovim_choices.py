"""The Neovim plugin's choices, in a real Neovim with the real language server and backend: which
buffers it hands to the server (served languages, never excluded files), the toggle and the manual
trigger, stepping aside for a completion menu (Neovim's own; nvim-cmp and blink.cmp are not
installable here and are coded against their documented APIs), a wrong token said as
"unauthorized", the help page; and a screenshot of the ghost text.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import test_neovim
from conftest import RunningBackend
from nvim_screen import capture
from test_neovim import DOCUMENT, LAST_LINE, NVIM, PLUGIN, Editor, one_line, server_cmd, start, wait_until

from core.local_tokens import CLIENT, read_token
from lsp_server.gate import DEFAULT_EXCLUDE

editor = test_neovim.editor

pytestmark = test_neovim.pytestmark


def statusline(editor: Editor) -> str:
    return editor.lua("return require('flywheel').statusline()")


def attached(editor: Editor) -> bool:
    return editor.lua("return #require('flywheel').clients(0) > 0")


def flywheel_notes(editor: Editor) -> list[str]:
    return [n for n in editor.lua("return _G.notes") if n.startswith("flywheel:")]


def capture_notes(editor: Editor) -> None:
    editor.lua("_G.notes = {}; vim.notify = function(msg, level) table.insert(_G.notes, msg) end")


def checkhealth(editor: Editor) -> str:
    editor.nvim.command("checkhealth flywheel")
    report = "\n".join(editor.nvim.current.buffer[:])
    editor.nvim.command("bwipeout")
    return report


def test_the_plugin_and_the_server_exclude_the_same_files(editor: Editor) -> None:
    assert editor.lua("return require('flywheel.gate').DEFAULT_EXCLUDE") == list(DEFAULT_EXCLUDE)
    excluded = "return require('flywheel.gate').excluded(...)"
    assert editor.lua(excluded, "/p/.env.local", [], "/p")
    assert editor.lua(excluded, "/home/me/.ssh/config", [], "/p")
    assert editor.lua(excluded, "/p/secret/db.py", ["secret/*"], "/p")
    assert not editor.lua(excluded, "/p/src/secret.py", ["secret/*"], "/p")
    assert not editor.lua(excluded, "/p/app.py", [], "/p")


def test_served_languages_only_never_excluded_files_toggle_and_manual_trigger(
    editor: Editor, backend: RunningBackend, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    (work / "secret").mkdir(parents=True)
    (work / "pyproject.toml").write_text("")  # the project root
    (work / "config.py").write_text(DOCUMENT)
    (work / "notes.md").write_text("# Notes\n")
    (work / ".env").write_text("API_KEY=abc\n")
    (work / "secret" / "db.py").write_text(DOCUMENT)
    editor.setup(
        cmd=server_cmd(),
        backend_url=backend.url,
        debounce_ms=0,
        exclude=["secret/*"],
        init_options={
            "stateDir": str(tmp_path / "lsp-state"),
            "token": read_token(backend.data_dir, CLIENT),
            "requestTimeoutS": 10,
        },
    )
    editor.nvim.command(f"edit {work / 'config.py'}")
    editor.wait_for_server()
    assert statusline(editor) == "Flywheel"

    # Markdown: not served by the backend's model, so not handed to the server. A .env (even set to
    # Python) and a file under an excluded glob: never.
    for name, filetype, expected in (
        ("notes.md", "markdown", ""),
        (".env", "python", "Flywheel: excluded"),
        ("secret/db.py", "python", "Flywheel: excluded"),
    ):
        editor.nvim.command(f"edit {work / name}")
        editor.nvim.command(f"set filetype={filetype}")
        editor.type("Ax<Esc>")
        assert not attached(editor), name
        assert statusline(editor) == expected, name

    # Back in the Python file: suggestions come while typing.
    editor.nvim.command(f"edit {work / 'config.py'}")
    assert attached(editor)
    editor.nvim.api.win_set_cursor(0, [LAST_LINE, 0])
    editor.type("A")
    editor.suggestion(lambda text: True)
    editor.type("<C-]><Esc>")

    # Switched off (everywhere, then this buffer only): nothing is asked.
    for off, on, word in (
        ("Flywheel toggle", "Flywheel toggle", "x"),
        ("Flywheel disable buffer", "Flywheel enable buffer", "y"),
    ):
        editor.nvim.command(off)
        assert statusline(editor) == "Flywheel: off"
        before = editor.answers()
        editor.type(f"A{word}")
        time.sleep(0.5)
        assert editor.answers() == before and editor.ghost() is None
        editor.type("<Esc>")
        editor.nvim.command(on)
        assert statusline(editor) == "Flywheel"
        editor.type("A")
        editor.suggestion(lambda text: True)
        editor.type("<C-]><Esc>")

    # Manual trigger: typing asks nothing; the suggest key does.
    editor.setup(
        cmd=server_cmd(),
        backend_url=backend.url,
        auto_trigger=False,
        exclude=["secret/*"],
        init_options={"stateDir": str(tmp_path / "lsp-state"), "token": read_token(backend.data_dir, CLIENT)},
    )
    assert statusline(editor) == "Flywheel: manual"
    before = editor.answers()
    editor.type("Az")
    time.sleep(0.5)
    assert editor.answers() == before and editor.ghost() is None
    for _ in range(20):
        editor.type("<M-\\>")
        wait_until(lambda before=before: editor.answers() > before, 15, "the answer to the suggest key")
        before = editor.answers()
        if editor.ghost() is not None:
            break
    assert editor.ghost() is not None


def screenshot(editor: Editor, ghost: str, tmp_path: Path) -> None:
    """The screen as a UI gets it (tests/editors/nvim_screen.py), as a picture: FLYWHEEL_SCREENSHOTS=DIR
    keeps it as DIR/neovim-ghost-text.png (the README's, in docs/screenshots, is taken so)."""
    typed = editor.line(LAST_LINE)
    # Wide enough for the line and its suggestion beside the number column: a narrower screen
    # wraps a long suggestion onto the next row.
    screen = capture(editor.nvim, max(72, len(typed + ghost) + 12), 10)
    rows = screen.text()
    # The suggestion is drawn after what is typed, in the ghost text's own colour.
    assert any((typed + ghost).strip() in row for row in rows), rows
    ghost_rgb = editor.lua("return vim.api.nvim_get_hl(0, { name = 'FlywheelSuggestion', link = false }).fg")
    assert screen.cells_in(ghost_rgb) >= len(ghost.replace(" ", ""))
    assert any(row.rstrip().endswith("Flywheel") for row in rows)  # the statusline component
    path = Path(os.environ.get("FLYWHEEL_SCREENSHOTS") or tmp_path) / "neovim-ghost-text.png"
    screen.save_png(path)
    assert path.stat().st_size > 1000


def test_a_completion_menu_hides_the_suggestion_and_tab_goes_to_the_menu(
    editor: Editor, backend: RunningBackend, tmp_path: Path
) -> None:
    # The user's own Tab (a common one): next item in a menu, else a Tab. Mapped before the plugin.
    editor.nvim.command(r'inoremap <expr> <Tab> pumvisible() ? "\<C-n>" : "\<Tab>"')
    editor.nvim.command("set number laststatus=2 noshowmode")
    editor.nvim.command(r"set statusline=\ %t%=%{v:lua.require'flywheel'.statusline()}\ ")
    editor.nvim.command("syntax on")
    start(editor, backend, tmp_path)
    ghost = editor.suggestion(one_line)
    line = editor.line(LAST_LINE)
    screenshot(editor, ghost["text"], tmp_path)

    # Neovim's own menu opens: the ghost text goes and nothing is asked while it is open.
    editor.type("<Cmd>call complete(col('.'), ['alpha', 'beta', 'gamma'])<CR>")
    assert editor.nvim.funcs.pumvisible() == 1
    assert editor.ghost() is None and editor.extmarks() == []
    before = editor.answers()
    # Tab is the menu's: the user's mapping selects the next item (the first was inserted).
    editor.type("<Tab>")
    assert editor.nvim.funcs.pumvisible() == 1
    assert editor.line(LAST_LINE) == line + "beta"
    assert editor.nvim.funcs.complete_info(["selected"])["selected"] == 1
    time.sleep(0.3)
    assert editor.answers() == before and editor.ghost() is None and editor.extmarks() == []

    # Closed, a fresh suggestion is asked for where the cursor is now.
    editor.type("<C-e>")
    assert editor.nvim.funcs.pumvisible() == 0
    wait_until(lambda: editor.answers() > before, 15, "a request after the menu closed")

    # With no menu and nothing on screen, Tab falls through to the user's mapping: a Tab.
    editor.type("<C-]>")
    editor.lua("require('flywheel.suggestion').clear()")
    text = editor.line(LAST_LINE)
    editor.lua("require('flywheel').set_enabled(false)")
    editor.type("<Tab>")
    assert editor.line(LAST_LINE) == text + "\t"


# Checkouts of nvim-cmp and blink.cmp (on neither PyPI nor npm, so not installed by `make test`):
# these tests run where one is given, e.g. FLYWHEEL_NVIM_CMP=/path/to/nvim-cmp.
@dataclass(frozen=True)
class MenuPlugin:
    checkout: str | None
    plugin_file: str
    setup: str
    show: str
    visible: str
    selected: str


# Items that start with what the menu filters by, so that it always shows them.
WORDS = "local word = %s:match('[%%w_]*$'); local items = {}; " + (
    "for _, w in ipairs({ 'alpha', 'beta', 'gamma' }) do "
    "items[#items + 1] = { label = word .. w, insertText = word .. w, kind = 1 } end"
)

NVIM_CMP = MenuPlugin(
    os.environ.get("FLYWHEEL_NVIM_CMP"),
    "plugin/cmp.lua",
    """
local cmp = require('cmp')
cmp.register_source('words', { complete = function(self, params, callback)
  """
    + WORDS % "params.context.cursor_before_line"
    + """
  callback(items)
end })
cmp.setup({
  completion = { autocomplete = false },
  mapping = {
    ['<Tab>'] = cmp.mapping(function(fallback)
      if cmp.visible() then cmp.select_next_item() else fallback() end
    end, { 'i' }),
    ['<C-e>'] = cmp.mapping.abort(),
  },
  sources = { { name = 'words' } },
})
""",
    "require('cmp').complete()",
    "require('cmp').visible()",
    "local e = require('cmp').get_selected_entry(); return e and e:get_completion_item().label",
)

BLINK_CMP = MenuPlugin(
    os.environ.get("FLYWHEEL_BLINK_CMP"),
    "plugin/blink-cmp.lua",
    """
package.preload['words'] = function()
  local source = {}
  function source.new() return setmetatable({}, { __index = source }) end
  function source:get_completions(ctx, callback)
    """
    + WORDS % "ctx.line:sub(1, ctx.cursor[2])"
    + """
    callback({ items = items, is_incomplete_forward = false, is_incomplete_backward = false })
  end
  return source
end
require('blink.cmp').setup({
  fuzzy = { implementation = 'lua' },
  keymap = { preset = 'none', ['<Tab>'] = { 'select_next', 'fallback' }, ['<C-e>'] = { 'hide', 'fallback' } },
  completion = {
    trigger = { show_on_keyword = false, show_on_trigger_character = false },
    ghost_text = { enabled = false },
  },
  sources = { default = { 'words' }, providers = { words = { name = 'words', module = 'words' } } },
})
""",
    "require('blink.cmp').show()",
    "require('blink.cmp').is_menu_visible()",
    "local e = require('blink.cmp').get_selected_item(); return e and e.label",
)


@pytest.mark.parametrize(
    "menu",
    [
        pytest.param(
            NVIM_CMP,
            id="nvim-cmp",
            marks=pytest.mark.skipif(
                not NVIM_CMP.checkout, reason="no nvim-cmp checkout (FLYWHEEL_NVIM_CMP)"
            ),
        ),
        pytest.param(
            BLINK_CMP,
            id="blink.cmp",
            marks=pytest.mark.skipif(
                not BLINK_CMP.checkout, reason="no blink.cmp checkout (FLYWHEEL_BLINK_CMP)"
            ),
        ),
    ],
)
def test_a_completion_plugins_menu_hides_the_suggestion_and_gets_tab(
    menu: MenuPlugin, editor: Editor, backend: RunningBackend, tmp_path: Path
) -> None:
    editor.nvim.command(f"set rtp^={menu.checkout}")
    editor.nvim.command(f"runtime {menu.plugin_file}")
    editor.lua(menu.setup)
    start(editor, backend, tmp_path)
    editor.suggestion(one_line)
    line = editor.line(LAST_LINE)
    editor.type(f"<Cmd>lua {menu.show}<CR>")
    wait_until(lambda: editor.lua(f"return {menu.visible}"), 10, "the plugin's menu")
    assert editor.ghost() is None and editor.extmarks() == []
    before = editor.answers()
    editor.type("<Tab>")  # the menu's: the next item, not the suggestion
    assert editor.lua(menu.selected).endswith(("alpha", "beta")) and editor.line(LAST_LINE) != line
    assert editor.ghost() is None
    editor.type("<C-e>")
    wait_until(lambda: not editor.lua(f"return {menu.visible}"), 10, "the menu to close")
    wait_until(lambda: editor.answers() > before, 15, "a request after the menu closed")


def test_a_wrong_token_is_unauthorized_not_an_outage(
    editor: Editor, backend: RunningBackend, tmp_path: Path
) -> None:
    capture_notes(editor)
    path = tmp_path / "a.py"
    path.write_text(DOCUMENT)
    editor.setup(
        cmd=server_cmd(),
        backend_url=backend.url,
        token="fw_wrong-token",
        init_options={"stateDir": str(tmp_path / "lsp-state")},
    )
    editor.nvim.command(f"edit {path}")
    wait_until(
        lambda: editor.lua("return #vim.lsp.get_clients({ name = 'flywheel' })") == 1, 30, "the server"
    )
    wait_until(
        lambda: statusline(editor) == "Flywheel: unauthorized", 30, "the statusline to say unauthorized"
    )
    notes = wait_until(lambda: flywheel_notes(editor), 10, "the message")
    time.sleep(0.5)
    notes = flywheel_notes(editor)
    assert len(notes) == 1 and "unauthorized" in notes[0] and "unreachable" not in notes[0], notes
    status = "\n".join(editor.lua("return require('flywheel').status_lines(5000)"))
    assert f"Backend: {backend.url}, unauthorized" in status

    report = checkhealth(editor)
    assert f"backend at {backend.url}: unauthorized" in report
    assert "backend reachable" not in report and "unreachable" not in report

    # Without a running server, :checkhealth calls the backend itself, with the token.
    editor.lua("vim.lsp.stop_client(vim.lsp.get_clients({ name = 'flywheel' }))")
    wait_until(lambda: editor.lua("return #vim.lsp.get_clients({ name = 'flywheel' })") == 0, 20, "the stop")
    editor.setup(cmd=["flywheel-is-not-installed", "lsp"], backend_url=backend.url, token="fw_wrong-token")
    report = checkhealth(editor)
    assert f"backend at {backend.url}: unauthorized" in report and "backend reachable" not in report
    editor.setup(
        cmd=["flywheel-is-not-installed", "lsp"],
        backend_url=backend.url,
        token=read_token(backend.data_dir, CLIENT),
    )
    assert f"backend reachable at {backend.url}, token accepted" in checkhealth(editor)


def test_the_help_page_has_its_tags(editor: Editor, tmp_path: Path) -> None:
    # A copy: helptags writes doc/tags next to the page (plugin managers do it on install).
    copy = tmp_path / "plugin"
    shutil.copytree(PLUGIN / "doc", copy / "doc")
    editor.nvim.command(f"helptags {copy / 'doc'}")
    editor.nvim.command(f"set rtp^={copy}")
    for tag in ("flywheel", "flywheel-debounce", "flywheel-menus", ":Flywheel", "flywheel.statusline()"):
        editor.nvim.command(f"help {tag}")
        assert editor.nvim.current.buffer.name.endswith("flywheel.txt"), tag
        assert tag in editor.nvim.current.line, tag
        editor.nvim.command("helpclose")
    assert NVIM is not None
