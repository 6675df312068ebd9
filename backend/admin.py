"""The first admin page: live version, accept rate and the checkpoint history, rendered on the server."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from backend.wire import CheckpointInfo

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d2330; }
h1 { margin-bottom: 0.2rem; } .sub { color: #667; margin-top: 0; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; margin: 1.5rem 0; }
.card { border: 1px solid #dde; border-radius: 8px; padding: 0.8rem 1.2rem; min-width: 9rem; }
.card .v { font-size: 1.6rem; font-weight: 600; } .card .k { color: #667; font-size: 0.85rem; }
table { border-collapse: collapse; }
td, th { padding: 0.3rem 0.8rem; border-bottom: 1px solid #eee; text-align: left; }
"""


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def _card(label: str, value: Any, element_id: str) -> str:
    return (
        f'<div class="card" id="{element_id}">'
        f'<div class="v">{_format(value)}</div><div class="k">{label}</div></div>'
    )


def render(live_version: str, base_model: str, stats: dict[str, Any], history: list[CheckpointInfo]) -> str:
    cards = [_card("live version", live_version, "live-version")]
    cards += [
        _card(key.replace("_", " "), value, f"stat-{key}")
        for key, value in stats.items()
        if isinstance(value, int | float) or value is None
    ]
    per_version = stats.get("per_version") or {}
    version_rows = "".join(
        f"<tr><td>{escape(version)}</td>"
        + "".join(f"<td>{escape(k)}: {_format(v)}</td>" for k, v in figures.items())
        + "</tr>"
        for version, figures in per_version.items()
    )
    checkpoint_rows = "".join(
        f"<tr><td>{escape(c.version)}</td><td>{escape(c.state)}</td><td>{_format(c.parent_version)}</td>"
        f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c.created_at))}</td></tr>"
        for c in history
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Flywheel admin</title><style>{STYLE}</style></head>
<body>
<h1>Flywheel</h1><p class="sub">base model {escape(base_model)}</p>
<div class="cards">{"".join(cards)}</div>
<h2>By model version</h2><table>{version_rows or "<tr><td>no episodes yet</td></tr>"}</table>
<h2>Checkpoints</h2>
<table><tr><th>version</th><th>state</th><th>parent</th><th>created</th></tr>
{checkpoint_rows or "<tr><td colspan=4>none yet: serving the base model</td></tr>"}</table>
</body></html>"""
