"""The dashboard's figures per kind of client and per language (Store.breakdown's slices), its date
range and its auto-refresh.

Client kinds: "lsp" (Flywheel's language server: Neovim, VS Code), "tabby" (Tabby's plugins through
backend/compat_routes.py), "openai" (OpenAI-style clients such as Continue; they report no outcomes,
so their episodes are served and never rated). Definitions as the store's: accept rate = accepted /
rated, mean reward over trainable episodes, ARC per 100 requests = 100 × kept characters / episodes.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from html import escape
from typing import Any

import plotly.graph_objects as go

# Auto-refresh choices (seconds; 0: off), and the default a page opens with.
REFRESH_CHOICES = (0, 10, 30, 60, 300)
CHART_TITLE = "Accept rate and ARC per client kind"
_COUNTS = ("served", "shown", "finalized", "trainable", "rated", "accepted")


def summarize(slices: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Slices summed per `key` ("client" or "language"), with their rates; most served first."""
    groups: dict[str, dict[str, Any]] = {}
    for piece in slices:
        group = groups.setdefault(
            piece[key], {key: piece[key], **dict.fromkeys(_COUNTS, 0), "reward_sum": 0.0, "arc_sum": 0.0}
        )
        for name in (*_COUNTS, "reward_sum", "arc_sum"):
            group[name] += piece[name]
    rows = []
    for group in groups.values():
        reward_sum, arc_sum = group.pop("reward_sum"), group.pop("arc_sum")
        rows.append(
            {
                **group,
                "accept_rate": group["accepted"] / group["rated"] if group["rated"] else None,
                "mean_reward": reward_sum / group["trainable"] if group["trainable"] else None,
                "arc_per_100": 100 * arc_sum / group["finalized"] if group["finalized"] else None,
            }
        )
    return sorted(rows, key=lambda row: (-row["served"], row[key]))


def day_range(since: date | None, until: date | None) -> tuple[float | None, float | None]:
    """The epoch seconds of a range of whole local days: from the start of `since` to the end of
    `until` (both included); None for an open end."""

    def start_of(day: date) -> float:
        return datetime(day.year, day.month, day.day).timestamp()

    return (
        start_of(since) if since else None,
        start_of(until + timedelta(days=1)) if until else None,
    )


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "rate":
        return f"{value:.1%}"
    if kind == "float":
        return f"{value:.3f}"
    if kind == "arc":
        return f"{value:.1f}"
    return escape(str(value))


_COLUMNS = (
    ("served", "served", "int"),
    ("shown", "shown", "int"),
    ("episodes", "finalized", "int"),
    ("rated", "rated", "int"),
    ("accept rate", "accept_rate", "rate"),
    ("mean reward", "mean_reward", "float"),
    ("ARC/100", "arc_per_100", "arc"),
)


def _table(rows: list[dict[str, Any]], key: str, element_id: str) -> str:
    header = f"<th>{'client kind' if key == 'client' else key}</th>" + "".join(
        f"<th>{label}</th>" for label, _, _ in _COLUMNS
    )
    body = "".join(
        f'<tr id="{element_id}-{_name(row[key])}"><td><b>{_name(row[key])}</b></td>'
        + "".join(f'<td class="{name}">{_cell(row[name], kind)}</td>' for _, name, kind in _COLUMNS)
        + "</tr>"
        for row in rows
    )
    body = body or f'<tr><td colspan="{len(_COLUMNS) + 1}">nothing served in this range</td></tr>'
    return f'<table id="{element_id}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _name(value: str) -> str:
    return escape(value or "unknown")


def _rates_chart(rows: list[dict[str, Any]]) -> go.Figure:
    names = [row["client"] for row in rows]
    figure = go.Figure(
        [
            # Offset groups: bars on two axes side by side, not drawn over each other.
            go.Bar(name="accept rate", x=names, y=[row["accept_rate"] or 0 for row in rows], offsetgroup=1),
            go.Bar(
                name="ARC/100",
                x=names,
                y=[row["arc_per_100"] or 0 for row in rows],
                yaxis="y2",
                offsetgroup=2,
            ),
        ]
    )
    return figure.update_layout(
        barmode="group",
        yaxis={"title": "accept rate", "tickformat": ".0%", "rangemode": "tozero"},
        yaxis2={"title": "ARC/100", "overlaying": "y", "side": "right", "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.15},
    )


def section(data: dict[str, Any], chart: Any) -> str:
    """Episodes per client kind (table and chart) and per language (table); `chart` is
    dashboard._chart, passed in so that both modules draw alike."""
    clients, languages = data["clients"], data["languages"]
    return (
        '<h2 id="clients">Clients and languages</h2>'
        '<p class="sub">By serving time within the range. OpenAI-style clients report no outcomes: their'
        " completions are counted, never rated nor trained on.</p>"
        f'<div class="charts">{chart(_rates_chart(clients), "chart-clients", CHART_TITLE)}'
        f"<div>{_table(clients, 'client', 'client')}<br>"
        f"{_table(languages, 'language', 'language')}</div></div>"
    )


def range_form(data: dict[str, Any]) -> str:
    """The date range and auto-refresh: a GET form, so the page's address says what it shows and
    a reload (the refresh too) shows the same."""
    shown = data["range"]
    options = "".join(
        f'<option value="{s}"{" selected" if s == shown["refresh_s"] else ""}>{_every(s)}</option>'
        for s in REFRESH_CHOICES
    )
    since, until = escape(shown["since_day"]), escape(shown["until_day"])
    return (
        '<form method="get" action="/admin" id="range">'
        f'<label>From <input type="date" name="since" id="since" value="{since}"></label> '
        f'<label>to <input type="date" name="until" id="until" value="{until}"></label> '
        f'<label>refresh <select name="refresh" id="refresh">{options}</select></label> '
        '<button type="submit" id="apply-range">Show</button>'
        f' <span class="fig" id="range-text">{escape(shown["text"])}</span></form>'
    )


def refresh_meta(data: dict[str, Any]) -> str:
    seconds = data["range"]["refresh_s"]
    return f'<meta http-equiv="refresh" content="{int(seconds)}">' if seconds else ""


def _every(seconds: int) -> str:
    if not seconds:
        return "off"
    return f"every {seconds} s" if seconds < 60 else f"every {seconds // 60} min"


def describe(since: float | None, until: float | None, refresh_s: int) -> dict[str, Any]:
    """The range as data.json and the form give it back."""

    def day(at: float | None, end: bool = False) -> str:
        if at is None:
            return ""
        return time.strftime("%Y-%m-%d", time.localtime(at - 1 if end else at))

    text = (
        f"{day(since) or 'the first'} to {day(until, end=True) or 'now'}"
        if since is not None or until is not None
        else "the last 7 days"
    )
    return {
        "since": since,
        "until": until,
        "since_day": day(since),
        "until_day": day(until, end=True),
        "refresh_s": refresh_s,
        "text": text,
    }
