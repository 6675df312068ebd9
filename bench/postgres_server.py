"""A private PostgreSQL server on loopback, for the benchmarks and the tests: `initdb` and `pg_ctl`
in a temporary directory, a free port, a random password, no Unix socket, gone when stopped.

The binaries are found on PATH, else in Debian's /usr/lib/postgresql/<version>/bin (the
`postgresql` package installs them there and links none onto PATH). PostgreSQL refuses to run as
root, so under root the server runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.processes import free_port

USER = "flywheel"
_DEBIAN = Path("/usr/lib/postgresql")


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(
        _DEBIAN.glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    password: str
    # Settings for a throwaway server: durability traded for speed (tests), or left as shipped.
    fast: bool = True
    _run_as: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        user, group = self._run_as or (None, None)
        subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            user=user,
            group=group,
            cwd=self.root,
        )

    def start(self) -> None:
        self._run(
            "pg_ctl", "start", "--wait", "--timeout=60", "-D", str(self.data), "-l", str(self.root / "log")
        )

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "stop", "--wait", "-m", mode, "-D", str(self.data))

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def execute(self, *statements: str, database: str = "postgres") -> None:
        """Statements outside a transaction (CREATE DATABASE cannot run inside one)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())


def start(fast: bool = True) -> PostgresServer:
    """A new server, initialised and started; stop() and remove its folder when done (`running`)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    run_as = None
    if os.geteuid() == 0:
        account = _unprivileged()
        run_as = (account.pw_uid, account.pw_gid)
        os.chown(root, *run_as)
    password = secrets.token_urlsafe(18)
    server = PostgresServer(bin_dir, root, free_port(), password, fast, run_as)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if run_as:
        os.chown(pwfile, *run_as)
    server._run(
        "initdb",
        "-D",
        str(server.data),
        "-U",
        USER,
        f"--pwfile={pwfile}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    )
    pwfile.unlink()
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(server.port),
        "unix_socket_directories": "''",
        "max_connections": "200",
    }
    if fast:
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    with open(server.data / "postgresql.conf", "a") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    server.start()
    return server


def _unprivileged() -> pwd.struct_passwd:
    """The account the server runs as under root: Debian's `postgres`, else `nobody`."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("PostgreSQL refuses to run as root, and there is no postgres or nobody account")


@contextlib.contextmanager
def running(fast: bool = True) -> Iterator[PostgresServer]:
    server = start(fast)
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)
