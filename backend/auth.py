"""Who is calling: tokens for people (client), operators (admin) and scrapers (metrics), and the
person behind each.

Tokens are random (`flywheel token create`), stored as their sha256 (a high-entropy secret needs
no slow hash) and looked up by that digest: the caller controls the token, not its digest, so the
lookup's timing says nothing about stored tokens. The token in the backend's configuration
(`backend.token`) is the operator's and counts as admin.

The backend is closed: without a valid token nothing but /healthz answers, and revoking the last
token closes it further, never opens it. A loopback backend with no token at all makes an admin
and a client token on start and leaves them in its data directory for the local language server
and trainer (core/local_tokens.py); one bound elsewhere refuses to start without tokens.

A metrics token may read /metrics and nothing else (a Prometheus scraper's): it can neither complete,
nor read episodes, the dashboard or the model's files.

The person a request is from derives from its token on the server (`person_of`): per-user caps,
the minimum number of users and canary assignment count people, whatever a client claims.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from backend.store import Store
from core import local_tokens
from core.config import Settings

log = logging.getLogger(__name__)

CLIENT = local_tokens.CLIENT
ADMIN = local_tokens.ADMIN
METRICS = "metrics"
# The roles a stored token (`flywheel token create`, POST /v1/admin/tokens) may have; the stores'
# tokens table checks the same (SQLite's schema step 6, PostgreSQL's 0003_metrics_role.sql).
ROLES = (CLIENT, ADMIN, METRICS)
# New and revoked tokens take effect within this many seconds in a running backend.
_REFRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its role and the pseudonymous person its token stands for."""

    role: str
    person: str
    token_hash: str

    def may(self, needed: str) -> bool:
        """Admin may do anything; client and metrics only what needs their own role."""
        return self.role == ADMIN or needed == self.role


class NoTokens(RuntimeError):
    """A backend reachable from other machines with no token would serve anyone."""


def new_token() -> str:
    return "fw_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def person_of(token_hash: str) -> str:
    """The pseudonym of the person a token belongs to: stable, and says nothing of the token."""
    return "p-" + hashlib.sha256(b"flywheel person\0" + token_hash.encode()).hexdigest()[:20]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    def __init__(self, store: Store, configured_token: str, metrics_token: str = "") -> None:
        self.store = store
        self._by_hash: dict[str, str] = {}
        # The tokens in the configuration (backend.token, backend.metrics_token), by hash.
        self._configured = {
            hash_token(t): role for t, role in ((metrics_token, METRICS), (configured_token, ADMIN)) if t
        }
        self._loaded_at = -_REFRESH_S

    async def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at >= _REFRESH_S:
            active = {t["hash"]: t["role"] for t in await self.store.tokens()}
            self._by_hash = {**active, **self._configured}
            self._loaded_at = time.monotonic()

    def reload(self) -> None:
        """Read the tokens again on the next request (this backend just made or revoked one)."""
        self._loaded_at = -_REFRESH_S

    async def identify(self, token: str | None) -> Principal | None:
        """The caller a token stands for; None for no token, an unknown or a revoked one."""
        if not token:
            return None
        return await self.by_hash(hash_token(token))

    async def by_hash(self, token_hash: str) -> Principal | None:
        await self._refresh()
        role = self._by_hash.get(token_hash)
        return None if role is None else Principal(role, person_of(token_hash), token_hash)


async def ensure_tokens(store: Store, settings: Settings) -> list[Path]:
    """Make sure somebody can use this backend and nobody else can; the token files written.

    With an active or configured token there is nothing to do. Otherwise a loopback backend makes
    an admin and a client token for its own machine, and any other refuses to start. A metrics
    token, stored or configured, counts for nothing here: with it alone nobody could use the backend.
    """
    if settings.backend.token or any(t["role"] != METRICS for t in await store.tokens()):
        return []
    host = settings.backend.host
    if not is_loopback(host):
        raise NoTokens(
            f"no access tokens and bound to {host}: anyone who reaches it could use it. Create "
            "tokens first (`flywheel token create --admin`, `flywheel token create --name alice`) "
            "or bind to 127.0.0.1."
        )
    written = []
    for role in (ADMIN, CLIENT):
        token = new_token()
        await store.add_token(f"local {role}", role, hash_token(token))
        written.append(local_tokens.write_token(settings.state_dir, role, token))
    log.info("made an admin and a client token for this machine in %s", written[0].parent)
    return written
