"""deploy/: what can be checked without a container daemon or systemd running. The compose file
passes `docker compose config` (or docker-compose's) and holds the parts an admin expects with no
secret inline; the systemd units pass `systemd-analyze verify` in a root that has their programs;
with-secrets.sh turns secret files into the command's environment. Nothing here starts a container
or a unit: there is no daemon on this machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ["flywheel-backend@.service", "flywheel-trainer.service", "flywheel-vllm.service"]
# What a token looks like (backend/auth.py new_token): none may be written in a deploy file.
TOKEN = re.compile(r"fw_[A-Za-z0-9_-]{20,}")


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


def test_the_compose_file_is_valid_and_keeps_secrets_out() -> None:
    done = subprocess.run(
        [*compose_command(), "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"postgres", "vllm", "backend1", "backend2", "trainer", "caddy"} <= set(services)
    assert any("pgdata:/var/lib/postgresql/data" in v for v in _volumes(services["postgres"]))
    gpu = services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert {p["target"] for p in _ports(services["caddy"])} == {80, 443}
    # Both backends and the trainer read the same settings and take their tokens as secrets.
    for name in ("backend1", "backend2", "trainer"):
        environment = services[name]["environment"]
        assert environment["FLYWHEEL_STORE__URL"].startswith("postgresql://")
        assert "FLYWHEEL_BACKEND__TOKEN" not in environment
        assert {"admin_token", "metrics_token"} <= {_secret_name(s) for s in services[name]["secrets"]}
    assert all("file" in secret for secret in config["secrets"].values())
    assert not TOKEN.search(done.stdout), "a token written in the compose configuration"


def _volumes(service: dict) -> list[str]:
    """As source:target strings, whichever form this compose prints them in."""
    volumes = service.get("volumes", [])
    return [v if isinstance(v, str) else f"{v.get('source')}:{v['target']}" for v in volumes]


def _ports(service: dict) -> list[dict]:
    return [p if isinstance(p, dict) else {"target": int(p.split(":")[-1])} for p in service["ports"]]


def _secret_name(secret: str | dict) -> str:
    return secret if isinstance(secret, str) else secret["source"]


def verify(units: list[Path], root: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of `units` installed in `root`, a tree with systemd's own units
    (their default dependencies) and an executable at every path the units run."""
    system = root / "etc/systemd/system"
    system.mkdir(parents=True, exist_ok=True)
    shared = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree(shared, root / "usr/lib/systemd/system", symlinks=True)
    names = []
    for unit in units:
        shutil.copy(unit, system / unit.name)
        names.append(unit.name.replace("@.", "@8001."))
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *names], capture_output=True, text=True, check=False
    )


def programs(units: list[Path]) -> set[str]:
    """Every absolute path a unit's ExecStart runs: the wrapper and the command it runs."""
    found = set()
    for unit in units:
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                words = line.removeprefix("ExecStart=").split()[:2]
                found |= {word for word in words if word.startswith("/")}
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_units_verify(tmp_path: Path) -> None:
    units = [DEPLOY / "systemd" / name for name in UNITS]
    for unit in units:
        assert not TOKEN.search(unit.read_text())
    root = tmp_path / "root"
    # Without the programs verify refuses the units: the check looks at ExecStart.
    missing = verify(units, root)
    assert missing.returncode != 0 and "is not executable" in missing.stderr
    for program in programs(units):
        path = root / program.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    done = verify(units, root)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_secrets_reach_the_command_from_files_only(tmp_path: Path) -> None:
    (tmp_path / "admin_token").write_text("fw_admin-from-a-file\n")
    (tmp_path / "metrics_token").write_text("fw_metrics-from-a-file")
    env = {"PATH": os.environ["PATH"], "CREDENTIALS_DIRECTORY": str(tmp_path)}
    done = subprocess.run(
        [str(DEPLOY / "with-secrets.sh"), "env"], env=env, capture_output=True, text=True, check=True
    )
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert seen["FLYWHEEL_BACKEND__TOKEN"] == "fw_admin-from-a-file"
    assert seen["FLYWHEEL_BACKEND__METRICS_TOKEN"] == "fw_metrics-from-a-file"
    # A secret without a file stays unset rather than empty.
    assert "PGPASSWORD" not in seen and "FLYWHEEL_SERVING__VLLM_API_KEY" not in seen
