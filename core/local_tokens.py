"""The tokens a backend made for its own machine, kept as files only their owner can read.

On first start a loopback backend with no access tokens creates an admin token and a client
token and writes them here (`<data dir>/tokens/admin`, `<data dir>/tokens/client`), so that
`flywheel up`, `flywheel lsp` and `flywheel trainer` on the same machine work with no setup while
the backend still refuses everyone else. Editors on other machines are given a token by an admin
(`flywheel token create --name alice`).

Imports nothing of ours: the language server reads these files too.
"""

from __future__ import annotations

import os
from pathlib import Path

ADMIN = "admin"
CLIENT = "client"


def tokens_dir(data_dir: Path) -> Path:
    return data_dir / "tokens"


def token_path(data_dir: Path, role: str) -> Path:
    return tokens_dir(data_dir) / role


def read_token(data_dir: Path, role: str) -> str:
    """The local token for `role`, or "" when there is none (or it cannot be read)."""
    try:
        return token_path(data_dir, role).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def write_token(data_dir: Path, role: str, token: str) -> Path:
    """Write `token` readable by this user alone; the file appears whole or not at all."""
    folder = tokens_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = token_path(data_dir, role)
    temporary = path.with_name(f".{role}.{os.getpid()}.tmp")
    # O_EXCL with mode 0600: the token is never readable by others, not even for an instant.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def authorization(token: str) -> dict[str, str]:
    """The HTTP header that presents `token` to the backend."""
    return {"authorization": f"Bearer {token}"}
