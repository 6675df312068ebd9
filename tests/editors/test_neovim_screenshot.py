"""A picture of Neovim's ghost text, taken from the real editor: Neovim with the plugin, the real
language server and backend, seen through a UI attach (what any Neovim GUI receives) and painted
with a monospace font. FLYWHEEL_SCREENSHOTS=DIR keeps it as DIR/neovim-ghost-text.png (the README's
docs/screenshots/neovim-ghost-text.png is taken so)."""

from __future__ import annotations

import os
from pathlib import Path

import test_neovim
from conftest import RunningBackend
from nvim_screen import capture
from test_neovim import LAST_LINE, Editor, one_line, start

editor = test_neovim.editor

pytestmark = test_neovim.pytestmark

WIDTH, HEIGHT = 72, 10


def test_a_screenshot_of_the_ghost_text(editor: Editor, backend: RunningBackend, tmp_path: Path) -> None:
    editor.nvim.command("set number laststatus=2 noshowmode")
    editor.nvim.command(r"set statusline=\ %t%=%{v:lua.require'flywheel'.statusline()}\ ")
    editor.nvim.command("syntax on")
    start(editor, backend, tmp_path)
    ghost = editor.suggestion(one_line)

    screen = capture(editor.nvim, WIDTH, HEIGHT)

    rows = screen.text()
    typed = editor.line(LAST_LINE)
    line = next(row for row in rows if typed.strip() in row)
    # The suggestion is drawn after what is typed, in the ghost text's own colour.
    assert (typed + ghost["text"]).strip() in line
    ghost_rgb = editor.lua("return vim.api.nvim_get_hl(0, { name = 'FlywheelSuggestion', link = false }).fg")
    assert screen.cells_in(ghost_rgb) >= len(ghost["text"].replace(" ", ""))
    assert any("Flywheel" in row for row in rows)  # the statusline component

    directory = Path(os.environ.get("FLYWHEEL_SCREENSHOTS") or tmp_path)
    path = directory / "neovim-ghost-text.png"
    screen.save_png(path)
    assert path.stat().st_size > 1000
