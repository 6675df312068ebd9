"""The tokens `flywheel bench` presents to the private backend it starts.

A loopback backend with no tokens makes an admin and a client token on its first start and leaves
them in its data directory (core/local_tokens.py): the benchmarks read those. Where a benchmark
needs traffic from many people (the trainer's per-user caps, the canary's share of users), each
simulated person gets a client token of their own, made through the admin API: the backend decides
who a request is from by its token, never by the `user_id` a client sends.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from core.local_tokens import authorization, read_token, token_path
from core.wire import TOKENS_PATH

# Given to the benchmarks' private backends whatever this environment says: a configured token
# would stop the backend from making the local tokens the benchmarks read.
NO_CONFIGURED_TOKEN = {"FLYWHEEL_BACKEND__TOKEN": ""}


def local_headers(data_dir: Path, role: str) -> dict[str, str]:
    """The header with the `role` token the backend serving from `data_dir` made on its first start."""
    token = read_token(data_dir, role)
    if not token:
        raise RuntimeError(f"no {role} token at {token_path(data_dir, role)}: was the backend given one?")
    return authorization(token)


def people(url: str, admin: dict[str, str], count: int, name: str = "bench") -> list[dict[str, str]]:
    """The headers of `count` people, a new client token each (made with the `admin` headers)."""
    with httpx.Client(base_url=url, headers=admin, timeout=60) as http:
        return [
            authorization(
                http.post(TOKENS_PATH, json={"name": f"{name}-{n}", "role": "client"})
                .raise_for_status()
                .json()["token"]
            )
            for n in range(count)
        ]
