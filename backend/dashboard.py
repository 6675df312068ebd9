"""The admin dashboard, rendered on the server; charts are plotly figures drawn by the plotly.js
that ships inside the plotly package (served at /admin/static/plotly.min.js: no CDN, no internet)."""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from typing import Any

import plotly.graph_objects as go

from backend import dashboard_clients
from core.confidence import FLOOR_METRIC_PREFIX

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem 2rem; color: #1d2330; background: #fafbfc; }
h1 { margin: 0; } h2 { margin-top: 2rem; font-size: 1.2rem; } .sub { color: #667; margin: 0.2rem 0 0; }
.cards { display: flex; gap: 0.8rem; flex-wrap: wrap; margin: 1.2rem 0; }
.card { background: #fff; border: 1px solid #dde; border-radius: 8px; padding: 0.6rem 1rem; min-width: 8rem; }
.card .v { font-size: 1.4rem; font-weight: 600; } .card .k { color: #667; font-size: 0.8rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 0.8rem; }
.chart { background: #fff; border: 1px solid #dde; border-radius: 8px; }
table { border-collapse: collapse; background: #fff; font-size: 0.9rem; }
td, th { padding: 0.35rem 0.7rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
.state { font-weight: 600; } .live { color: #1a7f37; } .canary { color: #9a6700; }
.rolled_back, .rejected { color: #cf222e; } .retired { color: #667; }
form { display: inline; } button { margin: 0 0.2rem 0.2rem 0; cursor: pointer; }
.why { color: #445; font-size: 0.85rem; } .fig { color: #667; font-size: 0.8rem; font-family: monospace; }
.warn { background: #fff8e6; border: 1px solid #d4a72c; border-radius: 8px; padding: 0.6rem 1rem; }
.warn { margin: 0.8rem 0; } .warn ul { margin: 0.3rem 0; }
.warn.stuck { background: #ffebe9; border-color: #cf222e; }
"""

LAYOUT = dict(height=260, margin=dict(l=50, r=20, t=40, b=40), template="plotly_white")


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def _card(label: str, value: Any, element_id: str) -> str:
    return (
        f'<div class="card" id="{element_id}"><div class="v">{_format(value)}</div>'
        f'<div class="k">{escape(label)}</div></div>'
    )


def _chart(figure: go.Figure, element_id: str, title: str) -> str:
    figure.update_layout(title=title, **LAYOUT)
    html = figure.to_html(
        full_html=False, include_plotlyjs=False, div_id=element_id, config={"displaylogo": False}
    )
    return f'<div class="chart">{html}</div>'


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _per_version(series: list[dict[str, Any]], key: str) -> go.Figure:
    figure = go.Figure()
    for version in sorted({row["version"] for row in series}):
        rows = [row for row in series if row["version"] == version and row[key] is not None]
        figure.add_trace(
            go.Scatter(
                x=[_when(row["at"]) for row in rows],
                y=[row[key] for row in rows],
                mode="lines+markers",
                name=version,
            )
        )
    return figure


def charts(data: dict[str, Any]) -> str:
    series = data["series"]
    hist = data["reward_histogram"]
    events = data["events_per_minute"]
    stats = data["stats"]
    per_version = stats.get("per_version", {})
    shown = go.Figure(
        [
            go.Bar(name="shown", x=list(per_version), y=[v["shown"] for v in per_version.values()]),
            go.Bar(name="abstained", x=list(per_version), y=[v["abstained"] for v in per_version.values()]),
        ]
    ).update_layout(barmode="stack")
    parts = [
        _chart(_per_version(series, "accept_rate"), "chart-accept-rate", "Accept rate by version"),
        _chart(_per_version(series, "arc_per_100"), "chart-arc", "ARC per 100 requests by version"),
        _chart(_per_version(series, "mean_reward"), "chart-reward", "Mean reward by version"),
        _chart(
            go.Figure(go.Bar(x=[h[0] for h in hist], y=[h[1] for h in hist])),
            "chart-reward-histogram",
            "Reward histogram",
        ),
        _chart(shown, "chart-shown", "Shown vs abstained"),
        _chart(
            go.Figure(go.Bar(x=[_when(e[0]) for e in events], y=[e[1] for e in events])),
            "chart-events",
            "Events per minute",
        ),
    ]
    return f'<div class="charts">{"".join(parts)}</div>'


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _decimals(value: float | None, places: int) -> str:
    return "–" if value is None else f"{value:.{places}f}"


# The simulation's per-cycle figures: (header, CycleRow field, how it is written) in table order.
SIM_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("cycle", "cycle", _format),
    ("live version", "live_version", _format),
    ("requests", "requests", _format),
    ("shown rate", "shown_rate", _percent),
    ("accept rate", "accept_rate", _percent),
    ("ARC/100", "arc_per_100", lambda v: _decimals(v, 1)),
    ("mean reward", "mean_reward", _format),
    ("held-out ppl", "heldout_ppl", lambda v: _decimals(v, 2)),
    ("trained on", "trained_on", _format),
    ("candidate", "candidate", _format),
    ("candidate state", "candidate_state", _format),
    ("dropped", "dropped", _format),
    ("trainer s", "trainer_s", lambda v: _decimals(v, 1)),
]
# Charts of the simulation: (element id, CycleRow field, title, y axis settings).
RATE_AXIS = {"range": [0, 1], "tickformat": ".0%"}
SIM_CHARTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("sim-accept", "accept_rate", "Accept rate per cycle", RATE_AXIS),
    ("sim-arc", "arc_per_100", "ARC per 100 requests per cycle", {}),
    ("sim-shown", "shown_rate", "Shown rate per cycle", RATE_AXIS),
    ("sim-reward", "mean_reward", "Mean reward per cycle", {}),
    ("sim-ppl", "heldout_ppl", "Held-out perplexity per cycle", {}),
]


def _per_cycle(cycles: list[dict[str, Any]], key: str) -> go.Figure:
    # Cycles without the figure (no rated episode, no perplexity yet) are left out, not drawn as 0.
    rows = [row for row in cycles if row.get(key) is not None]
    return go.Figure(
        go.Scatter(
            x=[row["cycle"] for row in rows],
            y=[row[key] for row in rows],
            text=[row["live_version"] for row in rows],
            mode="lines+markers",
            hovertemplate="cycle %{x} (%{text}): %{y}<extra></extra>",
        )
    ).update_xaxes(title="trainer cycles", dtick=1)


def simulation(report: dict[str, Any] | None) -> str:
    """The latest `flywheel simulate` run's evaluation figures per cycle; nothing without a report."""
    if not report:
        return ""
    charts = "".join(
        _chart(_per_cycle(report["cycles"], key).update_yaxes(**axis), chart_id, title)
        for chart_id, key, title, axis in SIM_CHARTS
    )
    return (
        f'<h2 id="simulation">Simulation</h2>{_sim_summary(report)}'
        f'<div class="charts">{charts}</div>{_sim_table(report["cycles"])}'
    )


def _sim_summary(report: dict[str, Any]) -> str:
    done = max((row["cycle"] for row in report["cycles"]), default=0)
    settings = ", ".join(f"{k} {v}" for k, v in report.get("settings", {}).items())
    return (
        f'<p class="sub" id="sim-summary">run {escape(report["run_id"])} on '
        f"{escape(report.get('corpus', ''))}: cycle {done} of {report.get('planned_cycles', 0)}, "
        f"updated {_when(report['updated_at'])} (started {_when(report['started_at'])}); "
        "figures of the evaluation rounds on held-out files.</p>"
        f'<p class="fig">{escape(settings)}</p>'
    )


def _sim_table(cycles: list[dict[str, Any]]) -> str:
    header = "".join(f"<th>{escape(label)}</th>" for label, _, _ in SIM_COLUMNS)
    body = "".join(
        f'<tr id="sim-cycle-{int(row["cycle"])}">'
        + "".join(f"<td>{write(row.get(key))}</td>" for _, key, write in SIM_COLUMNS)
        + "</tr>"
        for row in cycles
    )
    return f'<table id="sim-cycles"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _form_to(target: str, label: str, element_id: str, csrf: str) -> str:
    """A button that posts to `target`; the form carries the session's CSRF token."""
    return (
        f'<form method="post" action="{escape(target)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<button type="submit" id="{escape(element_id)}">{label}</button></form>'
    )


def _form(action: str, version: str, label: str, element_id: str, csrf: str) -> str:
    return _form_to(f"/admin/act/{action}/{version}", label, element_id, csrf)


def _actions(version: str, state: str, pinned: str | None, csrf: str) -> str:
    buttons = []
    if state == "canary":
        buttons.append(("promote", "Promote"))
    if state in ("canary", "live"):
        buttons.append(("rollback", "Roll back"))
    if state in ("gated", "canary", "live", "retired", "rolled_back") and pinned != version:
        buttons.append(("pin", "Pin live"))
    return "".join(_form(action, version, label, f"{action}-{version}", csrf) for action, label in buttons)


def _figures(metrics: dict[str, Any]) -> str:
    shown = {k: v for k, v in metrics.items() if k in ("gate", "canary", "rollback") and v}
    # The version's confidence floors (trainer/withholding.py), by where the cursor stands.
    floors = {
        key.removeprefix(FLOOR_METRIC_PREFIX): value
        for key, value in metrics.items()
        if key.startswith(FLOOR_METRIC_PREFIX)
    }
    if floors:
        shown["floors" + (" only" if metrics.get("floors_only") else "")] = floors
    if not shown:
        return ""
    return "".join(f'<div class="fig">{escape(k)}: {escape(_compact(v))}</div>' for k, v in shown.items())


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items() if v is not None) + "}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def timeline(checkpoints: list[Any], transitions: list[dict[str, Any]], pinned: str | None, csrf: str) -> str:
    by_version: dict[str, list[dict[str, Any]]] = {}
    for t in transitions:
        by_version.setdefault(t["version"], []).append(t)
    rows = []
    for c in reversed(checkpoints):
        history = "".join(
            f'<div class="why">{_when(t["at"])} → <b>{escape(t["to_state"])}</b>: {escape(t["reason"])}</div>'
            for t in by_version.get(c.version, [])
        )
        pin = " (pinned)" if pinned == c.version else ""
        rows.append(
            f'<tr id="checkpoint-{escape(c.version)}"><td><b>{escape(c.version)}</b></td>'
            f'<td class="state {escape(c.state)}">{escape(c.state)}{pin}</td>'
            f"<td>{_format(c.parent_version)}</td><td>{history}{_figures(c.metrics)}</td>"
            f"<td>{_actions(c.version, c.state, pinned, csrf)}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan=5>none yet: serving the base model</td></tr>"
    return (
        "<table><tr><th>version</th><th>state</th><th>parent</th><th>history and figures</th>"
        f"<th>actions</th></tr>{body}</table>"
    )


def loop_health(data: dict[str, Any]) -> str:
    """Warnings while a background pass keeps failing (the loop is stuck; /readyz answers 503) or
    stored rows have been set aside; nothing while all is well."""
    blocks = _stuck_passes(data.get("passes") or {}) + _set_aside(data.get("quarantine") or {})
    return f'<div id="loop-health">{blocks}</div>' if blocks else ""


def _stuck_passes(passes: dict[str, dict[str, Any]]) -> str:
    items = []
    for name, health in passes.items():
        if not health["stuck"]:
            continue
        success = _when(health["last_success"]) if health["last_success"] else "never"
        items.append(
            f'<li id="stuck-{escape(name)}"><b>{escape(name)}</b> failed {health["consecutive_failures"]}'
            f" times in a row (last success: {success}): {escape(health['last_error'] or '')}</li>"
        )
    if not items:
        return ""
    return (
        '<div class="warn stuck" id="stuck-passes"><b>The loop is stuck:</b> a background pass keeps'
        f" failing; nothing new is learned until it works again.<ul>{''.join(items)}</ul></div>"
    )


def _set_aside(quarantine: dict[str, Any]) -> str:
    counts = quarantine.get("counts") or {}
    if not counts:
        return ""
    by_table = ", ".join(f"{escape(table)} {count}" for table, count in counts.items())
    latest = "".join(
        f'<li class="fig">{_when(row["at"])} {escape(row["table"])} {escape(row["key"])}:'
        f" {escape(row['reason'])}</li>"
        for row in quarantine.get("latest") or []
    )
    return (
        f'<div class="warn" id="quarantine"><b>{sum(counts.values())} stored rows set aside</b>'
        f" (they could not be read; every pass goes on without them): {by_table}."
        f"<ul>{latest}</ul></div>"
    )


def render(data: dict[str, Any], csrf: str) -> str:
    stats = data["stats"]
    trainer = data.get("trainer") or {}
    trainer_text = (
        f"{trainer.get('state', '?')} at {_when(trainer['at'])}: {trainer.get('message', '')}"
        if trainer.get("at")
        else "no report yet"
    )
    cards = [
        _card("live version", data["live"], "live-version"),
        _card(f"canary ({data['canary_share']:.0%} of users)", data["canary"], "canary-version"),
        _card("pinned", data["pinned"], "pinned-version"),
        _card("served", stats["served"], "stat-served"),
        _card("shown", stats["shown"], "stat-shown"),
        _card("abstained", stats["abstained"], "stat-abstained"),
        _card("accept rate", stats["accept_rate"], "stat-accept-rate"),
        _card("mean reward", stats["mean_reward"], "stat-mean-reward"),
        _card("latency p50 ms (1 h)", data["latency_p50_ms"], "latency-p50"),
        _card("latency p95 ms (1 h)", data["latency_p95_ms"], "latency-p95"),
    ]
    verdict = data.get("canary_verdict") or {}
    unpin = _form("unpin", "-", "Unpin", "unpin", csrf) if data["pinned"] else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Flywheel admin</title><style>{STYLE}</style>
<script src="/admin/static/plotly.min.js"></script>{dashboard_clients.refresh_meta(data)}</head>
<body>
<h1>Flywheel</h1><p class="sub">base model {escape(data["base_model"])}
 · {_form_to("/admin/logout", "Log out", "logout", csrf)}</p>
{loop_health(data)}
{dashboard_clients.range_form(data)}
<div class="cards">{"".join(cards)}</div>
<p id="trainer-status"><b>Trainer:</b> {escape(trainer_text)}</p>
<p id="canary-verdict"><b>Canary test:</b> {escape(_compact(verdict) if verdict else "no canary")}</p>
{charts(data)}
{dashboard_clients.section(data, _chart)}
{simulation(data.get("simulation"))}
<h2>Checkpoints {unpin}</h2>
{timeline(data["checkpoints"], data["transitions"], data["pinned"], csrf)}
</body></html>"""


def login_page(error: str = "") -> str:
    message = f'<p style="color:#cf222e">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Flywheel admin: log in</title><style>{STYLE}</style></head>
<body><h1>Flywheel admin</h1>{message}
<form method="post" action="/admin/login">
<label>Admin token <input type="password" name="token" id="token" size="50" autofocus></label>
<button type="submit" id="login">Log in</button></form></body></html>"""
