"""`flywheel bench lsp`: what the language server costs the editor, measured on real processes.

1. Completion overhead: the language server's own time per inline completion (handler time minus
   the backend HTTP call), measured inside the server over real stdio, against a stub backend in
   its own process that answers at once (bench/stub_backend.py); also the client's round trip, and
   typed-ahead answers.
2. Incremental didChange on a 10,000-line document: time in the server per edit, and the
   client's pipelined send → applied time per edit.
3. Process start → `initialize` answer, against a bare pygls server started alternately.
4. Resident memory of the server after a scripted hour of editing (accelerated: an hour's worth
   of keystrokes, requests, acceptances and survival checks, sent as fast as it takes them).

`run` returns the figures and `summary` the report's rows (`flywheel bench lsp --out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from bench.rows import Reference, Target, row
from lsp_server.protocol import DID_CHANGE_STATUS

SERVER = [sys.executable, "-m", "lsp_server"]
BARE_SERVER = [
    sys.executable,
    "-c",
    "from pygls.lsp.server import LanguageServer; LanguageServer('bare', '0').start_io()",
]
# Answers each completion at once with a one-line suggestion, in a process of its own.
STUB_BACKEND = [sys.executable, "-m", "bench.stub_backend"]

TARGETS = {
    "completion_p50_ms": 1.0,
    "completion_p99_ms": 5.0,
    "did_change_ms": 0.5,
    "startup_ratio": 1.25,
    "rss_mb": 80.0,
}


# `flywheel bench all --quick`: every part runs, in seconds; the figures mean little.
QUICK = ["--completions", "30", "--edits", "200", "--starts", "2", "--session-minutes", "1"]


def run(settings: Any, argv: list[str]) -> dict[str, Any]:
    """Measures, prints the figures, and returns them."""
    parser = argparse.ArgumentParser(prog="flywheel bench lsp", description=__doc__)
    parser.add_argument("--completions", type=int, default=500, help="completion requests timed")
    parser.add_argument("--edits", type=int, default=2000, help="document edits timed")
    parser.add_argument("--starts", type=int, default=7, help="process starts of each server")
    parser.add_argument(
        "--session-minutes", type=float, default=60.0, help="length of the simulated editing session (memory)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    figures = asyncio.run(_run(args))
    figures["session_minutes"] = args.session_minutes
    _print(figures)
    if args.json:
        print(json.dumps(figures, indent=2))
    return figures


def summary(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows, with the targets of TARGETS; start-up is a ratio to bare pygls."""
    server, change = f["completion_server"], f["did_change_server"]
    minutes = f["session_minutes"]
    # The memory target is for an hour's session; a shorter (quick) one is reported without it.
    memory_target = Target("<", TARGETS["rss_mb"]) if minutes >= 60 else None
    return [
        row(
            "lsp",
            "completion overhead in the server, p50",
            server["p50_ms"],
            "ms",
            Target("<", TARGETS["completion_p50_ms"]),
        ),
        row(
            "lsp",
            "completion overhead in the server, p99",
            server["p99_ms"],
            "ms",
            Target("<", TARGETS["completion_p99_ms"]),
        ),
        row(
            "lsp",
            "didChange on a 10,000-line document, p50",
            change["p50_ms"],
            "ms",
            Target("<", TARGETS["did_change_ms"]),
        ),
        row(
            "lsp",
            "process start → initialize answer",
            f["startup_ours_s"],
            "s",
            Target("<=", TARGETS["startup_ratio"], of_ratio=True),
            Reference("bare pygls server", f["startup_bare_s"], "s"),
        ),
        row("lsp", f"resident memory after a {minutes:g}-minute session", f["rss_mb"], "MB", memory_target),
    ]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    stub = subprocess.Popen(STUB_BACKEND, stdout=subprocess.PIPE, text=True)
    try:
        assert stub.stdout is not None
        url = f"http://127.0.0.1:{stub.stdout.readline().strip()}"
        with tempfile.TemporaryDirectory(prefix="fw-bench-lsp-") as state:
            figures: dict[str, Any] = {"load_average": os.getloadavg()}
            figures.update(await _completions_and_edits(url, Path(state) / "a", args))
            figures.update(await _memory(url, Path(state) / "b", args.session_minutes))
        figures.update(_startup(args.starts))
        return figures
    finally:
        stub.terminate()
        stub.wait()


async def _start(url: str, state: Path, **options: Any) -> LanguageClient:
    client = LanguageClient("flywheel-bench", "0")
    # The server's news about the backend and languages: nothing to measure there.
    client.feature(DID_CHANGE_STATUS)(lambda params: None)
    await client.start_io(*SERVER)
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options={"backendUrl": url, "stateDir": str(state), "debounceMs": 0, **options},
        )
    )
    client.initialized(types.InitializedParams())
    return client


async def _stop(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


async def _status(client: LanguageClient) -> dict[str, Any]:
    return _plain(await client.protocol.send_request_async("flywheel/status", {}))


def _plain(value: Any) -> Any:
    # pygls hands untyped results back as namedtuples.
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _open(client: LanguageClient, uri: str, text: str) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        )
    )


class _Typist:
    """Sends incremental changes to one document, keeping its version."""

    def __init__(self, client: LanguageClient, uri: str) -> None:
        self.client, self.uri, self.version = client, uri, 1

    def insert(self, line: int, char: int, text: str) -> None:
        self.version += 1
        at = types.Position(line=line, character=char)
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                [types.TextDocumentContentChangePartial(range=types.Range(at, at), text=text)],
            )
        )


async def _ask(client: LanguageClient, uri: str, line: int, char: int, invoked: bool) -> Any:
    kind = types.InlineCompletionTriggerKind
    answer = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=char),
            context=types.InlineCompletionContext(trigger_kind=kind.Invoked if invoked else kind.Automatic),
        )
    )
    return answer.items[0] if answer and answer.items else None


def _document(lines: int) -> str:
    """Real Python source from the standard library, repeated up to the length asked for."""
    import inspect
    import json as json_module

    source = inspect.getsource(json_module.decoder).splitlines(keepends=True)
    return "".join(source[i % len(source)] for i in range(lines))


async def _completions_and_edits(url: str, state: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Completions, then edits in a fresh server, both on a 10,000-line document."""
    uri = (state / "big.py").as_uri()
    text = _document(10_000)
    return {
        **await _completions(url, state, uri, text, args.completions),
        **await _edits(url, state, uri, text, args.edits),
        "document_chars": len(text),
    }


async def _completions(url: str, state: Path, uri: str, text: str, completions: int) -> dict[str, Any]:
    """Explicit requests at many lines, then answers typed ahead: one character of a suggestion
    typed, and the rest asked for."""
    client = await _start(url, state)
    try:
        _open(client, uri, text)
        typist = _Typist(client, uri)
        lines = text.splitlines()

        # Warm the completion path (imports, the HTTP connection) before measuring.
        for i in range(20):
            await _ask(client, uri, 100 + i, 0, invoked=True)
        await client.protocol.send_request_async("flywheel/status", {})
        rtt: list[float] = []
        for i in range(completions):
            line = 200 + (i * 7) % 9000
            began = time.perf_counter()
            await _ask(client, uri, line, len(lines[line]), invoked=True)
            rtt.append(time.perf_counter() - began)
        # Typed ahead: one character of the suggestion on screen, then the rest from it.
        ahead: list[float] = []
        for i in range(min(200, completions)):
            line = 300 + i * 3
            item = await _ask(client, uri, line, len(lines[line]), invoked=True)
            if item is None:
                continue
            typist.insert(line, len(lines[line]), item.insert_text[0])
            lines[line] += item.insert_text[0]
            began = time.perf_counter()
            rest = await _ask(client, uri, line, len(lines[line]), invoked=False)
            ahead.append(time.perf_counter() - began)
            assert rest is not None and rest.command.arguments == item.command.arguments
        server = (await _status(client))["timings"]
    finally:
        await _stop(client)
    return {
        "completion_server": server["completion_overhead"],
        "completion_backend_call": server["backend_call"],
        "completion_rtt": _summary(rtt),
        "typed_ahead_server": server.get("typed_ahead"),
        "typed_ahead_rtt": _summary(ahead),
    }


async def _edits(url: str, state: Path, uri: str, text: str, edits: int) -> dict[str, Any]:
    """Keystrokes at many places in the document, pipelined."""
    client = await _start(url, state)
    try:
        _open(client, uri, text)
        typist = _Typist(client, uri)
        await client.protocol.send_request_async("flywheel/status", {})
        began = time.perf_counter()
        for i in range(edits):
            line = (i * 37) % 10_000
            typist.insert(line, 0, "x" if i % 20 else "\n")
        await client.protocol.send_request_async("flywheel/status", {})
        pipelined = (time.perf_counter() - began) / edits
        after = (await _status(client))["timings"]
    finally:
        await _stop(client)
    return {
        "did_change_server": after["did_change"],
        "did_change_pipelined_ms": round(pipelined * 1000, 4),
    }


async def _memory(url: str, state: Path, minutes: float) -> dict[str, Any]:
    """An hour of editing, accelerated: about 2 keystrokes a second, a completion request every
    5 keystrokes, every fourth suggestion accepted, files opened and closed; survival checks and
    rewrite windows shortened so they all run within the session."""
    shortened = {"survivalDelaysS": [0.05, 0.2, 1.0], "rewriteWindowS": 0.2, "flushIntervalS": 0.2}
    client = await _start(url, state, **shortened)
    try:
        keystrokes = int(minutes * 60 * 2)
        files = [(state / f"m{i}.py").as_uri() for i in range(20)]
        base = _document(800)
        typist: _Typist | None = None
        line = char = 0
        began = time.perf_counter()
        for k in range(keystrokes):
            if k % 600 == 0:  # a different file every five minutes
                if typist is not None:
                    client.text_document_did_close(
                        types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri=typist.uri))
                    )
                typist = _Typist(client, files[(k // 600) % len(files)])
                _open(client, typist.uri, base)
                line, char = 400, 0
            assert typist is not None
            typist.insert(line, char, "a" if k % 40 else "\n")
            line, char = (line + 1, 0) if k % 40 == 0 else (line, char + 1)
            if k % 5 == 0:
                item = await _ask(client, typist.uri, line, char, invoked=True)
                if item is not None and k % 20 == 0:
                    typist.insert(line, char, item.insert_text)
                    char += len(item.insert_text)
                    accept = types.ExecuteCommandParams("flywheel.accept", arguments=item.command.arguments)
                    await client.workspace_execute_command_async(accept)
        await asyncio.sleep(1.5)  # the last survival checks and rewrites
        status = await _status(client)
        pid = client._server.pid if client._server is not None else None
        rss_mb = _rss_mb(pid) if pid is not None else None
        elapsed = time.perf_counter() - began
    finally:
        await _stop(client)
    return {
        "session": {
            "keystrokes": keystrokes,
            "completion_requests": keystrokes // 5,
            "wall_s": round(elapsed, 1),
            "events_delivered": status["events_delivered"],
            "outbox_pending": status["outbox_pending"],
        },
        "rss_mb": rss_mb,
    }


def _rss_mb(pid: int) -> float | None:
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return round(int(row.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _startup(runs: int) -> dict[str, Any]:
    """Seconds from process start to the `initialize` answer, the two servers started in turn."""
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(runs):
        ours.append(_time_to_initialize(SERVER))
        bare.append(_time_to_initialize(BARE_SERVER))
    return {
        "startup_ours_s": round(statistics.median(ours), 4),
        "startup_bare_s": round(statistics.median(bare), 4),
        "startup_ratio": round(statistics.median(ours) / statistics.median(bare), 3),
    }


def _time_to_initialize(command: list[str]) -> float:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"processId": None, "capabilities": {}}}
    ).encode()
    began = time.perf_counter()
    pipe = subprocess.PIPE
    process = subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=subprocess.DEVNULL)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    process.stdin.flush()
    length = 0
    while (header := process.stdout.readline().strip()) != b"":
        if header.lower().startswith(b"content-length:"):
            length = int(header.split(b":")[1])
    process.stdout.read(length)
    elapsed = time.perf_counter() - began
    process.kill()
    process.wait()
    return elapsed


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0, 4)

    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


def _print(f: dict[str, Any]) -> None:
    server, change = f["completion_server"], f["did_change_server"]
    rows = [
        (
            "completion overhead in the server, p50",
            f"{server['p50_ms']:.3f} ms",
            "< 1 ms",
            server["p50_ms"] < TARGETS["completion_p50_ms"],
        ),
        (
            "completion overhead in the server, p99",
            f"{server['p99_ms']:.3f} ms",
            "< 5 ms",
            server["p99_ms"] < TARGETS["completion_p99_ms"],
        ),
        (
            "didChange, 10,000 lines, in the server, p50",
            f"{change['p50_ms']:.3f} ms",
            "< 0.5 ms",
            change["p50_ms"] < TARGETS["did_change_ms"],
        ),
        (
            "start → initialize answer, ours / bare pygls",
            f"{f['startup_ours_s']:.3f} s / {f['startup_bare_s']:.3f} s = {f['startup_ratio']:.2f}×",
            "≤ 1.25×",
            f["startup_ratio"] <= TARGETS["startup_ratio"],
        ),
        (
            f"resident memory after a {f['session_minutes']:g}-minute session",
            f"{f['rss_mb']} MB",
            "< 80 MB",
            f["rss_mb"] is not None and f["rss_mb"] < TARGETS["rss_mb"],
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"flywheel bench lsp  (load average {', '.join(f'{x:.2f}' for x in f['load_average'])})")
    for name, value, target, ok in rows:
        print(f"  {name:<{width}}  {value:>28}  target {target:<8}  {'ok' if ok else 'MISSED'}")
    rtt, ahead, backend = f["completion_rtt"], f["typed_ahead_rtt"], f["completion_backend_call"]
    print(
        f"  context: completion round trip seen by the client p50 {rtt['p50_ms']:.3f} ms,"
        f" p99 {rtt['p99_ms']:.3f} ms (backend call in it p50 {backend['p50_ms']:.3f} ms);"
        f" typed-ahead answer round trip p50 {ahead.get('p50_ms', 0):.3f} ms;"
        f" didChange in the server p99 {change['p99_ms']:.3f} ms, client send → applied (pipelined, the"
        f" bench's own pygls client included) {f['did_change_pipelined_ms']:.3f} ms per edit;"
        f" document {f['document_chars']} characters"
    )
    s = f["session"]
    print(
        f"  session: {s['keystrokes']} keystrokes, {s['completion_requests']} completion requests in"
        f" {s['wall_s']} s; {s['events_delivered']} events delivered, {s['outbox_pending']} pending"
    )
