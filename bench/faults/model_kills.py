"""The backend's model process SIGKILLed while completion requests are in flight.

Closed-loop clients keep `clients` requests in flight (each asks again as soon as it is answered,
more than one batch's room, so some wait in the HTTP process while others decode); after a warm-up
the model process is killed. A request in flight at the kill is one sent before it and answered
after it: those the dead process held must get 503 (ask again), those still waiting in the HTTP
process may be served by the new process; none may get another status or hang. Every request sent
once the new process answered its first must succeed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.tokens import NO_CONFIGURED_TOKEN, local_headers
from core.local_tokens import CLIENT
from core.processes import start_backend, stop_process

# Longer than a restart on a loaded machine: a request still unanswered after it has hung.
HANG_S = 120.0
PREFIXES = (
    "def parse_header(line):\n    name, _, value = ",
    "class Cache:\n    def __init__(self, size):\n        self.",
    "for index, item in enumerate(",
    "import os\nimport sys\n\ndef main(",
)


def model_process(backend_pid: int) -> psutil.Process:
    """The backend's model process: its one multiprocessing (spawn) child."""
    children = [
        child
        for child in psutil.Process(backend_pid).children()
        if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline())
    ]
    if len(children) != 1:
        raise RuntimeError(f"expected one model process, found {[c.cmdline() for c in children]}")
    return children[0]


@dataclass
class Answer:
    sent: float
    answered: float
    # The HTTP status; 0 when no answer came within HANG_S, -1 when the connection failed.
    status: int


async def _client(http: httpx.AsyncClient, n: int, stop: asyncio.Event, answers: list[Answer]) -> None:
    i = n
    while not stop.is_set():
        body = {"context": {"prefix": PREFIXES[i % len(PREFIXES)], "suffix": "\n", "path": "a.py"}}
        sent = time.monotonic()
        try:
            status = (await http.post("/v1/complete", json=body)).status_code
        except httpx.TimeoutException:
            status = 0
        except httpx.TransportError:
            status = -1
        answers.append(Answer(sent, time.monotonic(), status))
        i += 1


async def _one_kill(url: str, client: dict[str, str], backend_pid: int, clients: int, warm_s: float) -> dict:
    answers: list[Answer] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=client, timeout=HANG_S, limits=limits) as http:
        tasks = [asyncio.create_task(_client(http, n, stop, answers)) for n in range(clients)]
        await asyncio.sleep(warm_s)
        dead = model_process(backend_pid)
        os.kill(dead.pid, signal.SIGKILL)
        killed = time.monotonic()
        # Until every client has been served by the new process a few times.
        deadline = killed + HANG_S + 60
        while time.monotonic() < deadline:
            back = [a for a in answers if a.status == 200 and a.sent > killed]
            if len(back) >= 3 * clients:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
    in_flight = [a for a in answers if a.sent < killed < a.answered]
    after = [a for a in answers if a.sent > killed]
    served_again = [a for a in after if a.status == 200]
    back_at = min((a.answered for a in served_again), default=None)
    once_back = [a for a in after if back_at is not None and a.sent > back_at]
    replaced = model_process(backend_pid).pid != dead.pid
    return {
        "in_flight": len(in_flight),
        "in_flight_statuses": dict(Counter(str(a.status) for a in in_flight)),
        "sent_after_kill": len(after),
        "after_statuses": dict(Counter(str(a.status) for a in after)),
        "sent_once_back": len(once_back),
        "once_back_failed": sum(a.status != 200 for a in once_back),
        "back_after_s": round(back_at - killed, 2) if back_at is not None else None,
        "longest_in_flight_wait_s": round(max((a.answered - killed for a in in_flight), default=0.0), 2),
        "replaced": replaced,
    }


def survived(kill: dict[str, Any]) -> bool:
    """In flight: 503 or served, nothing else, nothing hung, and some 503 (the process held
    requests when it died); once back: every request served."""
    statuses = set(kill["in_flight_statuses"]) | set(kill["after_statuses"])
    return (
        statuses <= {"200", "503"}
        and kill["in_flight_statuses"].get("503", 0) > 0
        and kill["sent_once_back"] > 0
        and kill["once_back_failed"] == 0
        and kill["replaced"]
    )


def run_model_kills(
    model: str, work: Path, *, kills: int = 3, clients: int = 24, warm_s: float = 3.0
) -> dict[str, Any]:
    """`kills` SIGKILLs of the model process under `clients` closed-loop clients; the figures."""
    data_dir = work / "model-process"
    process, url, _ = start_backend(model, data_dir, **NO_CONFIGURED_TOKEN)
    started = time.monotonic()
    try:
        client = local_headers(data_dir, CLIENT)
        per_kill = []
        for _ in range(kills):
            kill = asyncio.run(_one_kill(url, client, process.pid, clients, warm_s))
            kill["survived"] = survived(kill)
            print(kill)
            per_kill.append(kill)
    finally:
        stop_process(process)
    total: Counter[str] = Counter()
    for kill in per_kill:
        total.update(kill["in_flight_statuses"])
    return {
        "clients": clients,
        "kills": per_kill,
        "in_flight": sum(k["in_flight"] for k in per_kill),
        "in_flight_statuses": dict(total),
        "sent_once_back": sum(k["sent_once_back"] for k in per_kill),
        "once_back_failed": sum(k["once_back_failed"] for k in per_kill),
        "survived": sum(k["survived"] for k in per_kill),
        "wall_s": round(time.monotonic() - started, 1),
    }
