"""Dashboard sessions: the browser's cookie holds a random session id, never the admin token.

A session remembers which token logged in (by hash, so a revoked token ends its sessions at once)
and carries a CSRF token that every dashboard form sends back. Sessions live in this process:
a restart logs admins out, which costs a login and keeps nothing secret on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "flywheel_session"
LIFETIME_S = 12 * 3600.0


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    csrf: str
    expires_at: float

    def csrf_matches(self, sent: str) -> bool:
        return hmac.compare_digest(sent.encode(), self.csrf.encode())


class Sessions:
    def __init__(self, lifetime_s: float = LIFETIME_S) -> None:
        self.lifetime_s = lifetime_s
        # Keyed by the id's digest: a memory dump or a timing probe gives no usable cookie.
        self._by_digest: dict[str, Session] = {}

    def open(self, token_hash: str) -> tuple[str, Session]:
        """A new session for the token with this hash: its id (for the cookie) and the session."""
        self._forget_expired()
        session_id = secrets.token_urlsafe(32)
        session = Session(token_hash, secrets.token_urlsafe(32), time.time() + self.lifetime_s)
        self._by_digest[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_digest.get(_digest(session_id))
        if session is None or session.expires_at <= time.time():
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._by_digest.pop(_digest(session_id), None)

    def _forget_expired(self) -> None:
        now = time.time()
        self._by_digest = {k: s for k, s in self._by_digest.items() if s.expires_at > now}


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()
