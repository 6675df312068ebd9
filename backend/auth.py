"""Who may do what: client tokens for completions and events, admin tokens for everything else.

Tokens are random (`flywheel token create`), stored as their sha256 (a high-entropy secret needs
no slow hash), and compared with hmac.compare_digest. The token in the backend's own configuration
(`backend.token`) is the operator's and counts as admin, so `flywheel up` works out of the box.
With no token at all the backend is open, which is only sensible on loopback (the default bind).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from backend.store import Store

CLIENT = "client"
ADMIN = "admin"
ROLES = (CLIENT, ADMIN)
COOKIE = "flywheel_admin"
# New tokens become valid within this many seconds in a running backend.
_REFRESH_S = 1.0


def new_token() -> str:
    return "fw_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, store: Store, configured_token: str) -> None:
        self.store = store
        self.configured = configured_token
        self._hashes: list[tuple[str, str]] = []
        self._loaded_at = -_REFRESH_S

    async def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at >= _REFRESH_S:
            self._hashes = [(t["hash"], t["role"]) for t in await self.store.tokens()]
            self._loaded_at = time.monotonic()

    async def is_open(self) -> bool:
        await self._refresh()
        return not self._hashes and not self.configured

    async def role_of(self, token: str | None) -> str | None:
        """The token's role, or None; every stored hash is compared, so timing says nothing."""
        await self._refresh()
        if not token:
            return None
        role = None
        if self.configured and hmac.compare_digest(token.encode(), self.configured.encode()):
            role = ADMIN
        digest = hash_token(token).encode()
        for stored, stored_role in self._hashes:
            if hmac.compare_digest(digest, stored.encode()) and role is None:
                role = stored_role
        return role

    async def allows(self, token: str | None, needed: str) -> bool:
        if await self.is_open():
            return True
        role = await self.role_of(token)
        return role == ADMIN or (role == CLIENT and needed == CLIENT)
