"""deploy/: what can be checked without a container daemon or systemd running. The compose file
passes `docker compose config` (or docker-compose's) and holds the parts an admin expects with no
secret inline; the systemd units pass `systemd-analyze verify` in a root that has their programs;
with-secrets.sh turns secret files into the command's environment. The vLLM server of the compose
file and of the unit is the one the backend starts for itself (backend/vllm_server.py's command
and environment, for the settings in the deploy's env file), and the backends are pointed at it
with its key. Nothing here starts a container or a unit: there is no daemon on this machine."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from vllm_support import LoopThread, needs_vllm, serving, small_cache_env, vllm_python_path

from backend.vllm_engine import VllmEngine
from backend.vllm_server import TEMPERATURE_ENV, flywheel_env, lora_rank, server_command, server_dtype
from core.config import ModelConfig, ServingConfig, Settings, load_settings
from core.processes import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ["flywheel-backend@.service", "flywheel-trainer.service", "flywheel-vllm.service"]
# What a token looks like (backend/auth.py new_token): none may be written in a deploy file.
TOKEN = re.compile(r"fw_[A-Za-z0-9_-]{20,}")
# Where the checkout is in the image and on a systemd machine (PYTHONPATH: core/ for healing).
CHECKOUT = "/opt/flywheel"


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


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose's env_file and systemd's EnvironmentFile= read these files."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def deploy_settings(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The settings a backend reads from `environment` alone (no flywheel.toml, no other FLYWHEEL_*)."""
    for name in [name for name in os.environ if name.startswith("FLYWHEEL_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return load_settings()


def backends_server(settings: Settings, python: str, host: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment (less the key) of the server the backend would start for these
    settings, on the port its vllm_urls name, listening on `host`, the checkout at CHECKOUT."""
    serving = settings.serving
    assert serving.engine == "vllm" and len(serving.vllm_urls) == 1
    port = urlsplit(serving.vllm_urls[0]).port
    rank = lora_rank(serving, settings.trainer.lora_r)
    command = server_command(python, settings.base_model, port or 80, serving, rank)
    command[command.index("--host") + 1] = host
    environment = flywheel_env(settings.model.temperature, "") | {"PYTHONPATH": CHECKOUT}
    del environment["VLLM_API_KEY"]  # with-secrets.sh's, from the vllm_api_key secret
    assert environment[TEMPERATURE_ENV] == repr(settings.model.temperature)
    return command, environment


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """A unit's [Service] settings, each key's values in order."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def unit_environment(unit: Path) -> dict[str, str]:
    """What the unit's service runs with: its EnvironmentFile=, then its Environment= lines (a
    template's instance, %i, as 8001)."""
    found = unit_settings(unit)
    environment: dict[str, str] = {}
    for path in found.get("EnvironmentFile", []):
        environment |= env_file(DEPLOY / "systemd" / Path(path).name)
    for line in found.get("Environment", []):
        environment |= dict(word.replace("%i", "8001").split("=", 1) for word in shlex.split(line))
    return environment


def credentials(unit: Path) -> set[str]:
    return {value.split(":", 1)[0] for value in unit_settings(unit).get("LoadCredential", [])}


def test_the_vllm_unit_starts_the_server_the_backend_would(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    unit = DEPLOY / "systemd" / "flywheel-vllm.service"
    environment = unit_environment(unit)
    backend = DEPLOY / "systemd" / "flywheel-backend@.service"
    settings = deploy_settings(unit_environment(backend), monkeypatch, tmp_path)
    command, wanted = backends_server(settings, f"{CHECKOUT}/.venv-vllm/bin/python", "127.0.0.1")
    (exec_start,) = unit_settings(unit)["ExecStart"]
    # systemd puts ${NAME} from the environment in as one word.
    words = [re.sub(r"\$\{(\w+)\}", lambda m: environment[m[1]], w) for w in shlex.split(exec_start)]
    assert words[0] == f"{CHECKOUT}/deploy/with-secrets.sh"
    assert words[1:] == command
    assert {name: environment.get(name) for name in wanted} == wanted
    # The key: VLLM_API_KEY for the server, FLYWHEEL_SERVING__VLLM_API_KEY for the backends.
    assert "vllm_api_key" in credentials(unit) and "vllm_api_key" in credentials(backend)
    assert urlsplit(settings.serving.vllm_urls[0]).hostname == "127.0.0.1"


def test_the_compose_vllm_service_is_the_server_the_backend_would_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    done = subprocess.run(
        [*compose_command(), "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    vllm = services["vllm"]
    backend = {name: str(value) for name, value in services["backend1"]["environment"].items()}
    settings = deploy_settings(backend, monkeypatch, tmp_path)
    command, wanted = backends_server(settings, "python3", "0.0.0.0")
    assert vllm["command"] == command
    assert {name: str(vllm["environment"].get(name)) for name in wanted} == wanted
    # The backends reach the service by its name, with its key.
    assert urlsplit(settings.serving.vllm_urls[0]).hostname == "vllm"
    for name in ("backend1", "backend2"):
        assert services[name]["environment"] == services["backend1"]["environment"]
        assert "vllm_api_key" in {_secret_name(s) for s in services[name]["secrets"]}
    assert "vllm_api_key" in {_secret_name(s) for s in vllm["secrets"]}
    # Its image is ours: vLLM with the plugin installed and core/ beside it.
    assert vllm["build"]["target"] == "vllm" and "entrypoint" not in vllm


def test_the_vllm_image_is_the_release_the_plugin_is_built_for() -> None:
    """deploy/Dockerfile's vllm stage: vLLM's image at the Makefile's pinned release, the plugin
    installed (its entry point is what loads the temperature plugin), core/ at CHECKOUT."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stage = dockerfile.split(" AS vllm", 1)[1].split("\nFROM ", 1)[0]
    (image,) = re.findall(r"^FROM vllm/vllm-openai:v(\S+) AS vllm$", dockerfile, re.MULTILINE)
    pinned = set(re.findall(r"VLLM_PACKAGE=vllm==(\d[\d.]*\d)", (REPO / "Makefile").read_text()))
    assert pinned == {image}
    assert f"COPY core {CHECKOUT}/core" in stage
    assert re.search(rf"pip install .*{CHECKOUT}/vllm_plugin", stage)
    assert f'ENTRYPOINT ["{CHECKOUT}/deploy/with-secrets.sh"]' in stage


@pytest.mark.parametrize("path", ["flywheel.env", "systemd/flywheel.env"])
def test_vllm_tempers_at_the_backends_temperature(path: str) -> None:
    settings = env_file(DEPLOY / path)
    assert float(settings[TEMPERATURE_ENV]) == float(settings["FLYWHEEL_MODEL__TEMPERATURE"])


@needs_vllm
def test_the_vllm_unit_command_serves_what_the_backend_takes(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The unit's ExecStart and environment, run as systemd would from this checkout (its paths
    for /opt/flywheel's, the tiny model, a free port, the key as a credential file): the server
    starts, and a backend's engine pointed at it (vllm_urls, the key) probes it and takes it: it
    tempers at the backend's temperature and heals (core.healing imported from PYTHONPATH)."""
    unit = DEPLOY / "systemd" / "flywheel-vllm.service"
    environment = unit_environment(unit)
    port = free_port()
    (exec_start,) = unit_settings(unit)["ExecStart"]
    words = [re.sub(r"\$\{(\w+)\}", lambda m: environment[m[1]], w) for w in shlex.split(exec_start)]
    words = [str(REPO) + w.removeprefix(CHECKOUT) if w.startswith(CHECKOUT) else w for w in words]
    words[1] = str(vllm_python_path())
    # The unit's "auto" as the backend resolves it for this environment: float32 on vLLM's CPU build.
    dtype = words.index("--dtype") + 1
    words[dtype] = server_dtype(words[1], ServingConfig(vllm_dtype=words[dtype]))
    words[words.index("--model") + 1] = str(tiny_model_dir)
    words[words.index("--port") + 1] = str(port)
    key = "fw_vllm-key-from-a-credential-file"
    (tmp_path / "vllm_api_key").write_text(key + "\n")
    env = {name: value.replace(CHECKOUT, str(REPO)) for name, value in environment.items()}
    env |= {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CREDENTIALS_DIRECTORY": str(tmp_path)}
    env |= small_cache_env()
    log = tmp_path / "vllm.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            words, env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    loop = LoopThread()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            assert server.poll() is None, f"the unit's server exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        # The key came from the credential, through with-secrets.sh: without it, refused.
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        temperature = float(environment["FLYWHEEL_MODEL__TEMPERATURE"])
        engine = VllmEngine(
            str(tiny_model_dir),
            ModelConfig(temperature=temperature),
            serving(vllm_urls=[url], vllm_api_key=key),
        )
        info = loop.run(engine.start())
        assert info.temperature == temperature
        loop.run(engine.close())
    finally:
        loop.close()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
