"""What a Neovim shows, as a picture: attach to it as a UI (the linegrid protocol every Neovim GUI
speaks), keep the grid and colours it draws, and paint them with a monospace font (Pillow)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvim
from PIL import Image, ImageDraw, ImageFont

FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
)


@dataclass
class Screen:
    width: int
    height: int
    fg: int = 0xE0E2EA
    bg: int = 0x14161B
    attrs: dict[int, dict[str, Any]] = field(default_factory=dict)
    # cells[row][col] = (text, highlight id)
    cells: list[list[tuple[str, int]]] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.cells = [[(" ", 0) for _ in range(self.width)] for _ in range(self.height)]

    def apply(self, name: str, args: list[Any]) -> None:
        if name == "default_colors_set":
            fg, bg = args[0], args[1]
            self.fg = fg if fg >= 0 else self.fg
            self.bg = bg if bg >= 0 else self.bg
        elif name == "hl_attr_define":
            self.attrs[args[0]] = args[1]
        elif name == "grid_cursor_goto":
            self.cursor = (args[1], args[2])
        elif name == "grid_clear":
            self.clear()
        elif name == "grid_line":
            _, row, col, cells = args[:4]
            hl = 0
            for cell in cells:
                text = cell[0]
                hl = cell[1] if len(cell) > 1 else hl
                for _ in range(cell[2] if len(cell) > 2 else 1):
                    if row < self.height and col < self.width:
                        self.cells[row][col] = (text, hl)
                    col += 1
        elif name == "grid_scroll":
            _, top, bot, left, right, rows, _cols = args
            copy = [list(r) for r in self.cells]
            for row in range(top, bot):
                source = row + rows
                if top <= source < bot:
                    self.cells[row][left:right] = copy[source][left:right]

    def text(self) -> list[str]:
        return ["".join(text for text, _ in row) for row in self.cells]

    def colours(self, hl: int) -> tuple[int, int]:
        attr = self.attrs.get(hl, {})
        fg, bg = attr.get("foreground", self.fg), attr.get("background", self.bg)
        return (bg, fg) if attr.get("reverse") else (fg, bg)

    def cells_in(self, rgb: int) -> int:
        """How many non-blank cells are drawn in foreground colour `rgb`."""
        return sum(
            text.strip() != "" and self.colours(hl)[0] == rgb for row in self.cells for text, hl in row
        )

    def save_png(self, path: Path, font_size: int = 15) -> None:
        font_path = next((f for f in FONTS if Path(f).exists()), None)
        font = ImageFont.truetype(font_path, font_size) if font_path else ImageFont.load_default()
        cell_w, cell_h = max(round(font.getlength("M")), font_size * 3 // 5), int(font_size * 1.45)
        image = Image.new("RGB", (cell_w * self.width + 16, cell_h * self.height + 16), _rgb(self.bg))
        draw = ImageDraw.Draw(image)
        for y, row in enumerate(self.cells):
            for x, (text, hl) in enumerate(row):
                fg, bg = self.colours(hl)
                origin = (8 + x * cell_w, 8 + y * cell_h)
                if bg != self.bg:
                    draw.rectangle([origin, (origin[0] + cell_w, origin[1] + cell_h)], fill=_rgb(bg))
                if text.strip():
                    draw.text((origin[0], origin[1] + 2), text, font=font, fill=_rgb(fg))
        # Insert mode's cursor: a bar before its cell.
        x, y = 8 + self.cursor[1] * cell_w, 8 + self.cursor[0] * cell_h
        draw.rectangle([(x, y + 1), (x + 1, y + cell_h - 2)], fill=_rgb(self.fg))
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


def _rgb(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


def capture(nvim: pynvim.Nvim, width: int, height: int, timeout_s: float = 10) -> Screen:
    """Attach as a UI, redraw everything, and read the drawing until it is flushed."""
    screen = Screen(width, height)
    nvim.ui_attach(width, height, rgb=True, ext_linegrid=True)
    try:
        nvim.command("redraw!")
        deadline = time.monotonic() + timeout_s
        flushed = False
        while time.monotonic() < deadline and not flushed:
            message = nvim.next_message()
            if message is None or message[0] != "notification" or message[1] != "redraw":
                continue
            for batch in message[2]:
                name, *calls = batch
                for args in calls:
                    screen.apply(name, args)
                flushed = flushed or name == "flush"
    finally:
        nvim.ui_detach()
    return screen
