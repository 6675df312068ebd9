"""Which version serves each user, and which installed versions may be removed.

Live serves everyone but the canary's share of users, who are chosen by a hash of their id, so a
user stays on one side for every request. A version is counted in use from the moment a request
is routed to it until its answer is back; one routed away is removed only once none is left, so a
swap never fails a request that was already on its way, whichever engine decodes it.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from core.wire import BASE_VERSION


def in_canary(user_id: str, share: float) -> bool:
    """Sticky routing: a user's hash puts them in the canary slice for every request."""
    bucket = int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big") / 2**64
    return bucket < share


class Routing:
    def __init__(self) -> None:
        self.live = BASE_VERSION
        self.canary: str | None = None
        self.canary_share = 0.0
        self.installed: set[str] = set()
        self._in_use: Counter[str] = Counter()
        self._routed_away: set[str] = set()

    def version_for(self, user_id: str) -> str:
        if self.canary is not None and in_canary(user_id, self.canary_share):
            return self.canary
        return self.live

    def take(self, user_id: str) -> str:
        """The version that serves this request, counted in use until `give_back`."""
        version = self.version_for(user_id)
        self._in_use[version] += 1
        return version

    def give_back(self, version: str) -> bool:
        """The request under `version` is answered (or given up); True when that leaves a version
        to remove."""
        self._in_use[version] -= 1
        if not self._in_use[version]:
            del self._in_use[version]
        return version in self._routed_away and not self._in_use[version]

    def in_use(self, version: str) -> int:
        return self._in_use[version]

    def add(self, version: str) -> None:
        """`version` is installed. Installing one already there keeps it: it is wanted (a route to it
        comes next), so it is not removed even if an earlier route sent its users away."""
        self.installed.add(version)
        self._routed_away.discard(version)

    def route(self, live: str, canary: str | None, share: float) -> None:
        """Serve `live`, and `canary` to its share of users, from the next request on."""
        for version in (live, canary):
            if version not in (None, BASE_VERSION) and version not in self.installed:
                raise ValueError(f"adapter {version} is not installed")
        self._routed_away = (self._routed_away | self.installed) - {live, canary}
        self.live, self.canary, self.canary_share = live, canary, share

    def unused(self) -> list[str]:
        """Versions routed away that no request uses any more: to be removed, as `removed` says."""
        return sorted(v for v in self._routed_away if not self._in_use[v])

    def removed(self, version: str) -> None:
        self._routed_away.discard(version)
        self.installed.discard(version)
