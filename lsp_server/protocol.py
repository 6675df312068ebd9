"""The contract between the language server and editor clients, beyond standard LSP 3.18.

Standard LSP has no way to say that an inline suggestion was displayed, accepted in part, or
dismissed. Flywheel's own clients send these notifications; any other client still works, and its
outcomes are inferred from `didChange`. README, "For editor-client authors", documents them.

Imported while the editor waits for `initialize`: standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The command carried by every inline completion item: arguments [completionId].
ACCEPT_COMMAND = "flywheel.accept"

# Client → server notifications.
DID_SHOW = "flywheel/didShowCompletion"  # {completionId}
DID_PARTIALLY_ACCEPT = "flywheel/didPartiallyAcceptCompletion"  # {completionId, acceptedLength}
DID_REJECT = "flywheel/didRejectCompletion"  # {completionId}

# Client → server requests (tools and tests).
STATUS_REQUEST = "flywheel/status"
FLUSH_REQUEST = "flywheel/flush"

# Server → client notification, sent whenever either field changes: {backend, languages}.
# `backend` is one of the three below; `languages` lists the LSP languageIds the server asks the
# backend about (served by the model or turned on by the user, less those turned off). The
# flywheel/status result carries the same two fields.
DID_CHANGE_STATUS = "flywheel/didChangeStatus"
BACKEND_OK = "ok"
BACKEND_UNAUTHORIZED = "unauthorized"  # a 401 or 403: the token is wrong or missing
BACKEND_UNREACHABLE = "unreachable"  # no answer, or an answer that is not the contract's

# initializationOptions / didChangeConfiguration keys of lsp_server/options.py a client may set to
# choose what is sent: {languageId: true|false, "*": ...} and a list of path globs.
LANGUAGES_OPTION = "languages"
EXCLUDE_OPTION = "exclude"

# initializationOptions key a client sets when it sends DID_SHOW: the server then stops treating
# the returned item as shown and waits for the notification.
REPORTS_SHOWN_OPTION = "reportsShown"


class InvalidParams(ValueError):
    """A notification's params do not follow this contract."""


@dataclass(frozen=True, slots=True)
class CompletionRef:
    """Params of DID_SHOW and DID_REJECT."""

    completion_id: str


@dataclass(frozen=True, slots=True)
class PartialAcceptance:
    """Params of DID_PARTIALLY_ACCEPT. `accepted_length` counts UTF-16 code units (as LSP
    positions do) of the item's insertText, from its range's start. Typed ahead into, a suggestion
    is served again whole over a range from where it began, so the count starts at the
    suggestion's beginning (at the cursor's line, once typing has crossed a line break of it). A
    client accepting word by word sends the growing total each time."""

    completion_id: str
    accepted_length: int


def parse_ref(params: Any) -> CompletionRef:
    return CompletionRef(_completion_id(_fields(params)))


def parse_partial(params: Any) -> PartialAcceptance:
    fields = _fields(params)
    length = fields.get("acceptedLength")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise InvalidParams("acceptedLength must be an integer >= 0 (UTF-16 code units)")
    return PartialAcceptance(_completion_id(fields), length)


def _fields(params: Any) -> Mapping[str, Any]:
    # pygls hands params of methods it does not know over as namedtuples.
    if hasattr(params, "_asdict"):
        params = params._asdict()
    if not isinstance(params, Mapping):
        raise InvalidParams("params must be an object")
    return params


def _completion_id(fields: Mapping[str, Any]) -> str:
    value = fields.get("completionId")
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidParams("completionId must be a non-empty string of at most 64 characters")
    return value
