"""The Flywheel language server: inline completions from the backend, outcomes back to it.

Startup matters (editors wait for the `initialize` answer), so this module imports only pygls and
lsprotocol; the rest (settings, h11, pydantic, SQLite, rapidfuzz) loads after `initialize`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method

from lsp_server.protocol import (
    ACCEPT_COMMAND,
    BACKEND_OK,
    BACKEND_UNAUTHORIZED,
    DID_CHANGE_STATUS,
    DID_PARTIALLY_ACCEPT,
    DID_REJECT,
    DID_SHOW,
    FLUSH_REQUEST,
    STATUS_REQUEST,
    InvalidParams,
    parse_partial,
    parse_ref,
)

if TYPE_CHECKING:
    from lsp_server.session import Session

logger = logging.getLogger(__name__)

SERVER_NAME = "flywheel"
SERVER_VERSION = "0.1.0"
SHUTDOWN_FLUSH_TIMEOUT_S = 1.0
# Never to be imported by the language server; flywheel/status reports any that are.
HEAVY_MODULES = ("torch", "transformers", "peft", "trl")


class FlywheelProtocol(LanguageServerProtocol):
    """pygls keeps its own copy of every document and rebuilds it on each change by walking all of
    its lines (milliseconds on a long file). The session keeps the only copy we use, so the
    built-in handlers just pass the notifications on."""

    def structure_message(self, data: dict[str, Any]) -> Any:
        # pygls logs a request whose params do not parse and never answers it, leaving the editor
        # waiting: answer it with the error instead.
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" in data and "method" in data:
                self._send_response(data["id"], error=exc.to_response_error())
            raise

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None


class FlywheelLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__(
            SERVER_NAME,
            SERVER_VERSION,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=FlywheelProtocol,
        )
        self.initialization_options: Any = None
        self.session: Session | None = None
        # Said in a window/showMessage since the backend last took the token.
        self.told_unauthorized = False

    def report_server_error(self, error: Exception, source: Any) -> None:
        # pygls would pop an error up in the editor; a completion helper never should.
        logger.error("error in the language server (%s): %s", getattr(source, "__name__", source), error)


server = FlywheelLanguageServer()


def heavy_modules() -> list[str]:
    return [name for name in HEAVY_MODULES if name in sys.modules]


def _empty() -> types.InlineCompletionList:
    return types.InlineCompletionList(items=[])


@server.feature(types.INITIALIZE)
def initialize(ls: FlywheelLanguageServer, params: types.InitializeParams) -> None:
    # Only remembered here: the answer to `initialize` must not wait for anything.
    ls.initialization_options = params.initialization_options


@server.feature(types.INITIALIZED)
def initialized(ls: FlywheelLanguageServer, params: types.InitializedParams) -> None:
    # Synchronous on purpose: the session exists before the next message (didOpen) is handled.
    from lsp_server.options import load
    from lsp_server.session import Session

    options = load(ls.initialization_options)
    # The enum's value ("utf-16"), not str() of it, which names the member.
    encoding = (
        getattr(ls.workspace.position_encoding, "value", None) or types.PositionEncodingKind.Utf16.value
    )
    ls.session = Session(
        options,
        root_path=ls.workspace.root_path,
        encoding=encoding,
        on_status=lambda status: _status_changed(ls, status),
    )
    ls.session.start_background()


def _status_changed(ls: FlywheelLanguageServer, status: dict[str, Any]) -> None:
    """Tell the client; a refused token also once in words, since a client that does not know
    flywheel/didChangeStatus would otherwise show nothing at all."""
    ls.protocol.notify(DID_CHANGE_STATUS, status)
    if status["backend"] == BACKEND_OK:
        ls.told_unauthorized = False
    elif status["backend"] == BACKEND_UNAUTHORIZED and not ls.told_unauthorized and ls.session:
        ls.told_unauthorized = True
        ls.window_show_message(
            types.ShowMessageParams(
                type=types.MessageType.Error,
                message=(
                    f"Flywheel: the backend at {ls.session.backend.base_url} refused the token "
                    "(unauthorized). Set a client token (the `token` option; `flywheel token` makes one)."
                ),
            )
        )


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: FlywheelLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    if ls.session is not None:
        doc = params.text_document
        ls.session.open(doc.uri, doc.text, doc.language_id, doc.version)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: FlywheelLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    if ls.session is None:
        return
    began = time.perf_counter()
    changes: list[tuple[tuple[int, int, int, int] | None, str]] = []
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            r = change.range
            changes.append(((r.start.line, r.start.character, r.end.line, r.end.character), change.text))
        else:
            changes.append((None, change.text))
    ls.session.change(params.text_document.uri, changes, params.text_document.version)
    ls.session.timings.add("did_change", time.perf_counter() - began)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: FlywheelLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    if ls.session is not None:
        ls.session.close(params.text_document.uri)


# pygls announces inlineCompletionProvider only when the feature is registered with options.
@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(
    ls: FlywheelLanguageServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    if ls.session is None:
        return _empty()
    try:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        served = await ls.session.complete(
            params.text_document.uri, params.position.line, params.position.character, invoked
        )
    except Exception:
        # A completion is never worth an error in the editor: log it and show nothing.
        logger.exception("inline completion failed")
        return _empty()
    if served is None:
        return _empty()
    # From where the suggestion began to the cursor: what was typed ahead is replaced by the
    # whole suggestion, so a client needs no memory of earlier answers.
    start = types.Position(line=served.start[0], character=served.start[1])
    item = types.InlineCompletionItem(
        insert_text=served.text,
        range=types.Range(start=start, end=params.position),
        command=types.Command(title="Accept", command=ACCEPT_COMMAND, arguments=[served.completion_id]),
    )
    return types.InlineCompletionList(items=[item])


@server.command(ACCEPT_COMMAND)
def accept(ls: FlywheelLanguageServer, *args: Any) -> None:
    if ls.session is not None and args and isinstance(args[0], str):
        ls.session.accept(args[0])
    elif args:
        logger.warning("%s expects [completionId], got %r", ACCEPT_COMMAND, args)


@server.feature(DID_SHOW)
def did_show(ls: FlywheelLanguageServer, params: Any) -> None:
    if (ref := _parsed(DID_SHOW, parse_ref, params)) is not None and ls.session is not None:
        ls.session.shown(ref.completion_id)


@server.feature(DID_PARTIALLY_ACCEPT)
def did_partially_accept(ls: FlywheelLanguageServer, params: Any) -> None:
    if (partial := _parsed(DID_PARTIALLY_ACCEPT, parse_partial, params)) is not None and ls.session:
        ls.session.partially_accept(partial.completion_id, partial.accepted_length)


@server.feature(DID_REJECT)
def did_reject(ls: FlywheelLanguageServer, params: Any) -> None:
    if (ref := _parsed(DID_REJECT, parse_ref, params)) is not None and ls.session is not None:
        ls.session.reject(ref.completion_id)


def _parsed(method: str, parse: Any, params: Any) -> Any:
    # A notification has no answer to carry an error: a bad one is logged and dropped.
    try:
        return parse(params)
    except InvalidParams as exc:
        logger.warning("ignoring %s: %s", method, exc)
        return None


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(
    ls: FlywheelLanguageServer, params: types.DidChangeConfigurationParams
) -> None:
    if ls.session is None:
        return
    settings = params.settings
    if not isinstance(settings, Mapping) and _can_pull_configuration(ls):
        # Pull-model clients send no settings, only the news that they changed.
        answer = await ls.workspace_configuration_async(
            types.ConfigurationParams(items=[types.ConfigurationItem(section=SERVER_NAME)])
        )
        settings = answer[0] if answer else None
    ls.session.configure(settings)


def _can_pull_configuration(ls: FlywheelLanguageServer) -> bool:
    workspace = ls.client_capabilities.workspace
    return bool(workspace and workspace.configuration)


@server.feature(STATUS_REQUEST)
async def status(ls: FlywheelLanguageServer, params: Any) -> dict[str, Any]:
    if ls.session is None:
        return {"ready": False, "heavy_modules": heavy_modules()}
    # Until the first completion says otherwise, ask the backend itself (bounded by its timeout).
    await ls.session.probe_backend()
    return {**ls.session.status(), "heavy_modules": heavy_modules()}


@server.feature(FLUSH_REQUEST)
async def flush(ls: FlywheelLanguageServer, params: Any) -> dict[str, Any]:
    """Deliver queued events now (tests and tools; editors need not call it)."""
    if ls.session is None:
        return {"pending": 0}
    pending = await ls.session.flush(ls.session.options.request_timeout_s * 2)
    return {"pending": pending}


@server.feature(types.SHUTDOWN)
async def shutdown(ls: FlywheelLanguageServer, params: None) -> None:
    if ls.session is not None:
        await ls.session.shutdown(SHUTDOWN_FLUSH_TIMEOUT_S)


def main() -> None:
    # stdout carries the protocol; logs go to stderr, which editors show in their output panel.
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pygls logs every message at INFO: too chatty for an output panel.
    for chatty in ("pygls",):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    server.start_io()
