"""A schemathesis check of the backend's door, for tests/backend/test_fuzz.py (SCHEMATHESIS_HOOKS).

Whatever a fuzzed request holds, the role of the caller decides the first answer: a stranger (no
token, a wrong one) gets 401 everywhere but the public routes, an editor's client token gets 403 on
the admin routes, and an admin is never refused. The caller a run speaks as is in
FLYWHEEL_FUZZ_CALLER. The tables below are the expectation, written apart from backend/access.py.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

CALLER_ENV = "FLYWHEEL_FUZZ_CALLER"
ADMIN, CLIENT, NO_TOKEN, WRONG_TOKEN = "admin", "client", "no token", "wrong token"
PUBLIC = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/admin"),
        ("GET", "/admin/login"),
        ("POST", "/admin/login"),
        ("POST", "/admin/logout"),
        ("GET", "/admin/static/plotly.min.js"),
    }
)
EDITOR = frozenset(
    {
        ("POST", "/v1/complete"),
        ("POST", "/v1/events"),
        ("GET", "/v1/model"),
        ("GET", "/v1/checkpoints"),
        # Tabby's and OpenAI's clients (backend/compat_routes.py).
        ("POST", "/v1/completions"),
        ("GET", "/v1/health"),
        ("POST", "/v1/health"),
        ("GET", "/v1beta/server_setting"),
        ("GET", "/v1/models"),
    }
)
# The login form answers a wrong token in its body with 401 whoever asks.
LOGIN = ("POST", "/admin/login")


def expected_refusal(caller: str, method: str, path: str) -> int | None:
    """The status the door must answer with, or None where the route itself answers."""
    key = (method.upper(), path)
    if key in PUBLIC:
        return None
    if caller in (NO_TOKEN, WRONG_TOKEN):
        return 401
    if caller == CLIENT and key not in EDITOR:
        return 403
    return None


@schemathesis.check
def door_answers_by_role(ctx: Any, response: Any, case: Any) -> None:
    caller = os.environ[CALLER_ENV]
    # The method sent: the coverage phase also tries methods a route lacks (TRACE, PATCH).
    method, path, status = case.method, case.operation.path, response.status_code
    expected = expected_refusal(caller, method, path)
    if expected is not None and status != expected:
        raise AssertionError(f"{caller}: {method.upper()} {path} answered {status}, expected {expected}")
    if expected is None and status in (401, 403) and (method.upper(), path) != LOGIN:
        raise AssertionError(f"{caller}: {method.upper()} {path} refused with {status}")
