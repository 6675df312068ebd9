"""One configuration for every part: `flywheel.toml` plus `FLYWHEEL_*` environment variables.

Lookup order for the file: `$FLYWHEEL_CONFIG`, `./flywheel.toml`, `$XDG_CONFIG_HOME/flywheel/flywheel.toml`.
Environment variables win over the file; nested keys use a double underscore, for example
`FLYWHEEL_MODEL__NAME=Qwen/Qwen2.5-Coder-0.5B` or `FLYWHEEL_BACKEND__PORT=9000`.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

APP_NAME = "flywheel"


class BackendConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8765
    # Where clients (language server, trainer) reach the backend; derived from host/port when empty.
    url: str = ""
    # Token the language server and trainer send; empty means the backend runs without client auth.
    token: str = ""
    # How often the backend closes observation windows and scores episodes.
    finalize_interval_s: float = 5.0

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/") or f"http://{self.host}:{self.port}"


class ModelConfig(BaseModel):
    # A Hub id or a local directory; empty means the bootstrapped default model under the data dir.
    name: str = ""
    # Fill-in-the-middle format: auto (detected from the tokenizer), flywheel, starcoder, codellama, none.
    fim: str = "auto"
    max_new_tokens: int = 48
    temperature: float = 0.7
    # Prompt budget in tokens; the text nearest the cursor is kept.
    context_tokens: int = 384
    device: str = "auto"


class EpisodeConfig(BaseModel):
    # An episode's observation window: after it closes, its events become one reward.
    window_s: float = 660.0
    # A suggestion visible for less than this was not seen: not trained on.
    min_visible_ms: float = 250.0


class RewardConfig(BaseModel):
    """DESIGN.md's table: accepted → s·accepted + (1−s)·rejected; rejected → rejected; abstained → 0."""

    accepted: float = 0.75
    rejected: float = -0.25
    abstained: float = 0.0


class LspConfig(BaseModel):
    survival_delays_s: list[float] = Field(default_factory=lambda: [30.0, 120.0, 600.0])
    telemetry: bool = True
    request_timeout_s: float = 2.0
    flush_interval_s: float = 1.0
    user_id: str = ""
    # Where the language server keeps its event outbox and pseudonymous user id;
    # empty means platformdirs' user_state_dir("flywheel").
    state_dir: str = ""


class TrainerConfig(BaseModel):
    objective: str = "pg"
    # Continuous mode: run a cycle once this many new episodes are in, or this much time has passed.
    min_episodes: int = 16
    interval_s: float = 300.0
    poll_s: float = 10.0
    learning_rate: float = 2e-4
    batch_size: int = 8
    epochs: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    device: str = "auto"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_", env_nested_delimiter="__", extra="ignore", toml_file=None
    )

    data_dir: Path | None = None
    backend: BackendConfig = Field(default_factory=BackendConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    episodes: EpisodeConfig = Field(default_factory=EpisodeConfig)
    rewards: RewardConfig = Field(default_factory=RewardConfig)
    lsp: LspConfig = Field(default_factory=LspConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def state_dir(self) -> Path:
        path = self.data_dir or Path(platformdirs.user_data_dir(APP_NAME))
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def base_model(self) -> str:
        """What the backend serves: the configured Hub id or directory, else the bootstrapped model."""
        return self.model.name or str(self.default_model_dir)

    @property
    def database_path(self) -> Path:
        return self.state_dir / "flywheel.sqlite3"

    @property
    def checkpoints_dir(self) -> Path:
        return self.state_dir / "checkpoints"

    @property
    def default_model_dir(self) -> Path:
        return self.state_dir / "models" / "bootstrap"

    @property
    def trainer_dir(self) -> Path:
        return self.state_dir / "trainer"


def config_file() -> Path | None:
    candidates = [
        os.environ.get("FLYWHEEL_CONFIG"),
        "flywheel.toml",
        str(Path(platformdirs.user_config_dir(APP_NAME)) / "flywheel.toml"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)
