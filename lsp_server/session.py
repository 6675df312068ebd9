"""Everything the language server does after `initialize`, as a plain object the thin LSP handlers
call: documents, completions, outcome tracking, the event outbox, status.

Created on `initialized`, after the `initialize` answer has gone out, so nothing here slows the
editor's startup handshake.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.wire import Event
from lsp_server.backend_client import BackendClient, BackendError, warm_imports
from lsp_server.context import cursor_context
from lsp_server.documents import UTF16, Document, code_units
from lsp_server.gate import DEFAULT_EXCLUDE, enabled_languages, excluded, language_enabled
from lsp_server.options import Options, pseudonym, with_client_options
from lsp_server.outbox import Outbox
from lsp_server.protocol import BACKEND_OK, BACKEND_UNAUTHORIZED, BACKEND_UNREACHABLE
from lsp_server.ranges import utf16_units
from lsp_server.redact import redact, redact_context
from lsp_server.sender import OutboxSender
from lsp_server.show_signals import RecentOutcomes
from lsp_server.timings import Timings
from lsp_server.tracker import Tracker

logger = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite3"
# Until the backend has said which languages it serves, it is asked again after these waits (the
# last repeating): an editor opened before `flywheel up` gets suggestions once it is up.
MODEL_RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


@dataclass(frozen=True)
class Served:
    """An answer: `text` goes from `start` (line, character in the document's encoding) to the
    cursor. A fresh suggestion starts at the cursor; one typed ahead into starts where the
    suggestion began, so the editor replaces what was typed with the whole suggestion and keeps
    nothing of its own. LSP 3.18 and VS Code want that range on one line: once the typing has
    crossed a line break of the suggestion, the answer starts at the cursor's line."""

    completion_id: str
    text: str
    start: tuple[int, int]


StatusListener = Callable[[dict[str, Any]], None]


class Session:
    def __init__(
        self,
        options: Options,
        root_path: str | None = None,
        encoding: str = UTF16,
        on_status: StatusListener | None = None,
    ) -> None:
        self.options = options
        self.root_path = root_path
        self.encoding = encoding
        self.documents: dict[str, Document] = {}
        self.user_id = options.user_id or pseudonym(options.state_dir)
        self.backend = BackendClient(options.backend_url, options.token, options.request_timeout_s)
        # BACKEND_OK, _UNAUTHORIZED or _UNREACHABLE; None before the first contact.
        self.backend_state: str | None = None
        self.last_backend_error: str | None = None
        # The languages the backend's model serves (GET /v1/model); None until it has said.
        self.served: list[str] | None = None
        # Told {backend, languages} whenever either changes (flywheel/didChangeStatus).
        self._on_status = on_status
        self._announced: dict[str, Any] | None = None
        self._excluded: dict[str, bool] = {}
        # Excluded documents the editor opened: their text is not kept (gate.py).
        self._ignored: set[str] = set()
        self.gated_requests = 0
        self._model_retry: asyncio.TimerHandle | None = None
        self._model_retries = 0
        self.model_version: str | None = None
        self.outbox = _open_outbox(options.state_dir / OUTBOX_FILE)
        self.sender = OutboxSender(
            self.outbox,
            self._send_events,
            enabled=lambda: self.options.telemetry,
            interval_s=options.flush_interval_s,
        )
        self.recent = RecentOutcomes()
        self.tracker = Tracker(
            self._record,
            self._text_of,
            options.survival_delays_s,
            rewrite_window_s=options.rewrite_window_s,
            infer_shown=not options.reports_shown,
        )
        # The backend call of the latest completion request; a newer request cancels it.
        self._inflight: asyncio.Task[Any] | None = None
        self._request_seq = 0
        self.cache_answers = 0
        # (completion id, UTF-16 units of the suggestion before the latest answer's text) when a
        # typed-ahead answer began after the suggestion did: acceptedLength counts from there.
        self._answer_skips: tuple[str, int] | None = None
        self.timings = Timings()
        self.stale_changes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._unwritten: list[Event] = []
        self._warming: asyncio.Future[None] | None = None
        self._closed = False

    def start_background(self) -> None:
        self.sender.start()
        loop = asyncio.get_running_loop()
        # The first completion should not pay for importing h11, pydantic and rapidfuzz.
        self._warming = loop.run_in_executor(None, warm_imports)
        self._warming.add_done_callback(_log_warm_failure)
        # Which languages are served, and whether the token works, before the first keystroke.
        self._refresh_soon()

    # -- documents ----------------------------------------------------------------------------

    def open(self, uri: str, text: str, language_id: str, version: int | None = None) -> None:
        if uri in self.documents:
            self.close(uri)  # opened again without a close: what was followed there is over
        if self._is_excluded(uri):
            # A secrets file's text is not even kept: nothing here could ever send it.
            self._ignored.add(uri)
            return
        self.documents[uri] = Document(text, language_id, self.encoding)
        self.documents[uri].version = version
        self.recent.opened(uri)

    def change(
        self,
        uri: str,
        changes: list[tuple[tuple[int, int, int, int] | None, str]],
        version: int | None = None,
    ) -> None:
        document = self.documents.get(uri)
        if document is None:
            if uri not in self._ignored:
                logger.warning("change to a document that was never opened: %s", uri)
            return
        if version is not None and document.version is not None and version <= document.version:
            # Replayed or reordered: applying it twice would corrupt the copy and every range in it.
            self.stale_changes += 1
            logger.warning("ignoring change to %s: version %d after %d", uri, version, document.version)
            return
        if version is not None:
            document.version = version
        self.recent.changed(uri)
        for change_range, text in changes:
            self.tracker.edit(uri, document.apply(change_range, text))
        self._schedule_checks()

    def close(self, uri: str) -> None:
        self.tracker.closed(uri)
        self.recent.closed(uri)
        self.documents.pop(uri, None)
        self._ignored.discard(uri)

    # -- completions --------------------------------------------------------------------------

    async def complete(self, uri: str, line: int, character: int, invoked: bool = False) -> Served | None:
        """A suggestion for the cursor, or None: unknown document, position outside it, backend
        abstaining, unreachable or too slow, or the document changed while we waited. `invoked`:
        the user asked explicitly, so a fresh suggestion rather than the one on screen."""
        began = time.perf_counter()
        document = self.documents.get(uri)
        if document is None:
            self.gated_requests += uri in self._ignored
            return None
        if not await self.may_ask(uri, document.language_id):
            self.gated_requests += 1
            return None
        offset = document.offset_at(line, character, strict=True)
        if offset is None:
            return None
        self.tracker.request(uri, offset)
        pending = None if invoked else self.tracker.pending_at(uri, offset)
        if pending is not None:
            # Typed ahead into the suggestion on screen: answered from it, no backend call.
            self.cache_answers += 1
            served = self._typed_ahead(document, line, pending.completion_id, pending.text, pending.start)
            self.timings.add("typed_ahead", time.perf_counter() - began)
            return served
        self._answer_skips = None
        revision = document.revision
        waited = [0.0]  # debounce and backend time: not the language server's own
        answer = await self._latest_answer(document, offset, uri, waited)
        if answer is not None:
            self.timings.add("completion_overhead", time.perf_counter() - began - waited[0])
            self.timings.add("backend_call", waited[0])
        if answer is None or not answer.text:
            return None
        if self.documents.get(uri) is not document or document.revision != revision:
            return None  # the cursor has moved on; this answer belongs to text that is gone
        if self.options.telemetry:
            # Untracked otherwise: its later life must not be reported once telemetry is back on.
            self.tracker.served(answer.completion_id, uri, offset, answer.text)
        return Served(answer.completion_id, answer.text, (line, character))

    def _typed_ahead(
        self, document: Document, line: int, completion_id: str, text: str, origin: int
    ) -> Served:
        """The whole suggestion from `origin` (its first character's offset) to the cursor on
        `line`, or from the start of that line if the suggestion began on an earlier one."""
        line_start = document.line_start(line)
        skip = max(line_start - origin, 0)
        column = code_units(document.text[line_start : origin + skip], document.encoding)
        self._answer_skips = (completion_id, utf16_units(text[:skip])) if skip else None
        return Served(completion_id, text[skip:], (line, column))

    async def _latest_answer(self, document: Document, offset: int, uri: str, waited: list[float]) -> Any:
        """Debounce, then ask the backend, unless a newer request came in meanwhile: only the
        latest request is worth an answer (cancel-previous)."""
        self._request_seq += 1
        mine = self._request_seq
        if self._inflight is not None:
            self._inflight.cancel()
            self._inflight = None
        if self.options.debounce_ms > 0:
            slept = time.perf_counter()
            await asyncio.sleep(self.options.debounce_ms / 1000.0)
            waited[0] += time.perf_counter() - slept
            if mine != self._request_seq:
                return None
        task = asyncio.ensure_future(self._ask_backend(document, offset, uri, waited))
        self._inflight = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # $/cancelRequest: the editor no longer wants this answer
            return None  # replaced by a newer request
        finally:
            if self._inflight is task:
                self._inflight = None

    async def _ask_backend(self, document: Document, offset: int, uri: str, waited: list[float]) -> Any:
        from core.wire import CompleteRequest, CompletionContext

        context = cursor_context(document, offset, uri, self.root_path)
        # Redacted as whole lines: a secret cut by the cursor or the window's edges is still found.
        start, end = offset - len(context.prefix), offset + len(context.suffix)
        prefix, suffix = redact_context(document.text, start, offset, end)
        request = CompleteRequest(
            context=CompletionContext(
                prefix=prefix,
                suffix=suffix,
                path=context.path,
                **({"language": context.language} if context.language else {}),
            ),
            # With telemetry off nothing is learned from this person, so nothing names them either,
            # and the backend keeps nothing of the request.
            user_id=self.user_id if self.options.telemetry else "anonymous",
            telemetry=self.options.telemetry,
            evaluation=self.options.evaluation,
            # Numbers only, no code: sent whatever the telemetry setting.
            signals=self.recent.signals(uri),
            # The version's own rule unless an evaluation asks for the floors (the backend refuses
            # "floors" outside one).
            show_rule=self.options.show_rule if self.options.evaluation else "version",
        )
        try:
            # The editor needs a bound on the whole call, imports on first use included.
            called = time.perf_counter()
            async with asyncio.timeout(self.options.request_timeout_s):
                answer = await self.backend.complete(request)
            waited[0] += time.perf_counter() - called
        except TimeoutError:
            self._backend_failed(BackendError(f"no answer within {self.options.request_timeout_s} s"))
            return None
        except BackendError as exc:
            self._backend_failed(exc)
            return None
        self._backend_reached()
        self.model_version = answer.model_version
        return answer

    # -- backend state and the gate -----------------------------------------------------------

    @property
    def backend_ok(self) -> bool | None:
        return None if self.backend_state is None else self.backend_state == BACKEND_OK

    def languages(self) -> list[str]:
        """What the server asks for: served by the model or turned on by the user, less turned off."""
        return enabled_languages(self.served or (), self.options.languages)

    async def may_ask(self, uri: str, language_id: str) -> bool:
        """Never an excluded path; a language only once the backend has said it serves it (or the
        user turned it on)."""
        if self._is_excluded(uri):
            return False
        if self.served is None and language_id not in self.options.languages:
            await self.refresh_model()
        return language_enabled(language_id, self.served or (), self.options.languages)

    def _is_excluded(self, uri: str) -> bool:
        if (hidden := self._excluded.get(uri)) is None:
            hidden = self._excluded[uri] = excluded(uri, self.options.exclude, self.root_path)
        return hidden

    async def refresh_model(self) -> None:
        """GET /v1/model: the languages served and whether the token is accepted."""
        try:
            info = await self.backend.model_info()
        except BackendError as exc:
            self._backend_failed(exc)
            self._retry_model_later()
            return
        self._model_retries = 0
        if self.model_version is None:
            self.model_version = info.live_version
        self.served = list(info.languages)
        self._backend_reached()

    def _refresh_soon(self) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self.refresh_model())
        task.add_done_callback(_log_refresh_failure)

    def _retry_model_later(self) -> None:
        if self._model_retry is not None or self._closed or self.served is not None:
            return
        delay = MODEL_RETRY_S[min(self._model_retries, len(MODEL_RETRY_S) - 1)]
        self._model_retries += 1
        self._model_retry = asyncio.get_running_loop().call_later(delay, self._retry_model_now)

    def _retry_model_now(self) -> None:
        self._model_retry = None
        if self.served is None:
            self._refresh_soon()

    def _backend_reached(self) -> None:
        if self.backend_state in (BACKEND_UNREACHABLE, BACKEND_UNAUTHORIZED):
            logger.info("backend reachable again at %s", self.backend.base_url)
            if self.served is not None:
                self._refresh_soon()  # back after an outage: perhaps with another model
        self.backend_state, self.last_backend_error = BACKEND_OK, None
        self._announce()

    def _backend_failed(self, exc: BackendError) -> None:
        state = BACKEND_UNAUTHORIZED if exc.unauthorized else BACKEND_UNREACHABLE
        # Once per change: a down backend must not flood the editor's log on every keystroke.
        if self.backend_state != state:
            if state == BACKEND_UNAUTHORIZED:
                logger.error(
                    "the backend at %s refused the token (%s): no completions until a client token is "
                    "set (the `token` option, or `flywheel token` on the backend)",
                    self.backend.base_url,
                    exc,
                )
            else:
                logger.warning("backend unavailable at %s, no completions: %s", self.backend.base_url, exc)
        self.backend_state, self.last_backend_error = state, str(exc)
        self._announce()

    def _announce(self) -> None:
        if self.backend_state is None:
            return
        status = {"backend": self.backend_state, "languages": self.languages()}
        if status != self._announced:
            self._announced = status
            if self._on_status is not None:
                self._on_status(status)

    def accept(self, completion_id: str) -> bool:
        return self._signal("accept", self.tracker.accept(completion_id), completion_id)

    def shown(self, completion_id: str) -> bool:
        self.tracker.shown(completion_id)
        return self._signal("show", self.tracker.get(completion_id) is not None, completion_id)

    def partially_accept(self, completion_id: str, accepted_units: int) -> bool:
        # The client counts from the start of the item it shows; the tracker from the suggestion's.
        if self._answer_skips is not None and self._answer_skips[0] == completion_id:
            accepted_units += self._answer_skips[1]
        known = self.tracker.partially_accept(completion_id, accepted_units)
        return self._signal("partial acceptance", known, completion_id)

    def reject(self, completion_id: str) -> bool:
        return self._signal("rejection", self.tracker.reject(completion_id), completion_id)

    def _signal(self, what: str, known: bool, completion_id: str) -> bool:
        if not known:
            logger.info("%s for unknown or finished completion %s", what, completion_id)
        self._schedule_checks()
        return known

    # -- configuration ------------------------------------------------------------------------

    def configure(self, raw: Any) -> None:
        old = self.options
        new = with_client_options(old, raw)
        if new.state_dir != old.state_dir:
            logger.info("stateDir only takes effect when the language server starts")
            new = dataclasses.replace(new, state_dir=old.state_dir)
        self.options = new
        if (new.backend_url, new.token, new.request_timeout_s) != (
            old.backend_url,
            old.token,
            old.request_timeout_s,
        ):
            previous = self.backend
            self.backend = BackendClient(new.backend_url, new.token, new.request_timeout_s)
            self.backend_state, self.served = None, None
            if self._model_retry is not None:
                self._model_retry.cancel()
                self._model_retry, self._model_retries = None, 0
            asyncio.get_running_loop().create_task(previous.aclose())
            self.sender.wake()  # a fixed token or URL need not wait out the backoff
            self._refresh_soon()
        if (new.exclude, new.languages) != (old.exclude, old.languages):
            self._excluded.clear()
            self._announce()
        if new.user_id != old.user_id:
            self.user_id = new.user_id or pseudonym(new.state_dir)
        self.tracker.survival_delays_s = new.survival_delays_s
        self.tracker.rewrite_window_s = new.rewrite_window_s
        self.tracker.infer_shown = not new.reports_shown
        self.sender.interval_s = new.flush_interval_s

    # -- events -------------------------------------------------------------------------------

    def _record(self, event: Event) -> None:
        self.recent.observe(event, self.tracker.uri_of(event.completion_id))
        if self.options.telemetry and not self._closed:
            if event.text:
                event = event.model_copy(update={"text": redact(event.text)})
            # Written right after the current message is handled: the editor's answer does not
            # wait for SQLite, and a burst of events shares one commit.
            self._unwritten.append(event)
            if len(self._unwritten) == 1:
                try:
                    asyncio.get_running_loop().call_soon(self._write_events)
                except RuntimeError:
                    self._write_events()

    def _write_events(self) -> None:
        events, self._unwritten = self._unwritten, []
        try:
            # JSON from here on: the outbox keeps each event as the body it is sent with.
            self.outbox.add_many([e.model_dump(mode="json", exclude_none=True) for e in events])
        except sqlite3.Error:
            logger.exception("could not store %d events in the outbox", len(events))

    async def _send_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await self.backend.send_events(events)
        except BackendError as exc:
            if exc.unauthorized:
                self._backend_failed(exc)  # a token refused here is refused for completions too
            raise

    async def flush(self, timeout_s: float) -> int:
        """Deliver what is in the outbox now; returns how many events are still waiting."""
        self._write_events()
        if self.options.telemetry:
            try:
                await asyncio.wait_for(self.sender.drain(), timeout_s)
            except Exception as exc:
                logger.info("flush incomplete: %s", exc)
        return self.outbox.pending()

    def _text_of(self, uri: str) -> str | None:
        document = self.documents.get(uri)
        return None if document is None else document.text

    def _schedule_checks(self) -> None:
        """Run due survival checks and rewrite captures, and keep one timer armed for the next."""
        due = None if self._closed else self.tracker.poll()
        if due == self._timer_due:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = due
        if due is not None:
            delay = max(due - time.monotonic(), 0.0)
            # A timer can fire a hair early; the tracker then finds nothing due and we re-arm.
            self._timer = asyncio.get_running_loop().call_later(delay + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_due = None
        self._schedule_checks()

    # -- status and shutdown ------------------------------------------------------------------

    async def probe_backend(self) -> None:
        """Whether the backend takes our token, its live version and languages, before any
        completion, so a client can show them at start. Once known, completions keep it current."""
        if self.backend_state is not None and self.served is not None:
            return
        await self.refresh_model()

    def status(self) -> dict[str, Any]:
        self._write_events()
        return {
            "ready": True,
            "backend_url": self.backend.base_url,
            "backend": self.backend_state,
            "languages": self.languages(),
            "served_languages": self.served,
            "exclude": [*DEFAULT_EXCLUDE, *self.options.exclude],
            "gated_requests": self.gated_requests,
            "open_documents": len(self.documents),
            "ignored_documents": len(self._ignored),
            "backend_ok": self.backend_ok,
            "last_backend_error": self.last_backend_error,
            "model_version": self.model_version,
            "telemetry": self.options.telemetry,
            "outbox_pending": self.outbox.pending(),
            "outbox_dropped": self.outbox.dropped,
            "events_delivered": self.sender.delivered,
            "waiting_suggestions": self.tracker.waiting_count,
            "accepted_suggestions": self.tracker.accepted_count,
            "rewrites_watched": self.tracker.rewrite_count,
            "cache_answers": self.cache_answers,
            "stale_changes": self.stale_changes,
            "events_refused": self.sender.refused,
            "events_duplicate": self.sender.duplicates,
            "survival_delays_s": list(self.tracker.survival_delays_s),
            "timings": self.timings.summary(),
        }

    async def shutdown(self, flush_timeout_s: float) -> None:
        if self._closed:
            return
        # What would have been measured later is measured now, as on close.
        self.tracker.close_all()
        self._write_events()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._model_retry is not None:
            self._model_retry.cancel()
        if self._inflight is not None:
            self._inflight.cancel()
        await self.sender.stop(flush_timeout_s)
        await self.backend.aclose()
        self.outbox.close()


def _open_outbox(path: Path) -> Outbox:
    try:
        return Outbox(path)
    except (OSError, sqlite3.Error) as exc:
        # Completions matter more than durability: keep events in memory for this run.
        logger.error("cannot open the event outbox at %s (%s); events kept in memory only", path, exc)
        return Outbox(":memory:")


def _log_refresh_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("could not ask the backend for its model: %s", task.exception())


def _log_warm_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("could not preload the completion path: %s", future.exception())
