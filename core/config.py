"""One configuration for every part: `flywheel.toml` plus `FLYWHEEL_*` environment variables.

Lookup order for the file: `$FLYWHEEL_CONFIG`, `./flywheel.toml`, `$XDG_CONFIG_HOME/flywheel/flywheel.toml`
(core/config_file.py: which keys a repository's own file may set, unknown keys, one-line errors).
Environment variables win over the file; nested keys use a double underscore, for example
`FLYWHEEL_MODEL__NAME=Qwen/Qwen2.5-Coder-0.5B` or `FLYWHEEL_BACKEND__PORT=9000`.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from core import config_file, local_tokens
from core.config_file import ConfigError

APP_NAME = "flywheel"
# Whether this load takes a workspace's flywheel.toml whole (see load_settings).
_TRUST_WORKSPACE: ContextVar[bool] = ContextVar("trust_workspace", default=True)


class BackendConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8765
    # Where clients (language server, trainer) reach the backend; derived from host/port when empty.
    url: str = ""
    # The token this process sends (language server, trainer), and on the backend an operator's
    # admin token. Empty: the token a local backend left in the data directory (tokens/), which
    # it makes on first start (core/local_tokens.py).
    token: str = ""
    # On the backend: a token that may scrape /metrics and nothing else (Prometheus's). Empty: none.
    metrics_token: str = ""
    # Names the backend answers to in the Host header (DNS rebinding defence); empty: the loopback
    # names and the bound host. Behind a reverse proxy, its public name ("flywheel.example.com").
    allowed_hosts: list[str] = Field(default_factory=list)
    # How often the backend closes observation windows and scores episodes.
    finalize_interval_s: float = 5.0
    # Dynamic batching: how long the first request of a batch waits for company, and the batch cap.
    batch_window_ms: float = 5.0
    max_batch: int = 16
    # While a batch is decoding, requests join it between steps once this many wait (or as many
    # as there is room for), or once the first has waited this many steps: a prefill costs about
    # as much for one request as for four, so joining in groups buys throughput.
    join_min: Annotated[int, Field(ge=1)] = 4
    join_wait_steps: Annotated[int, Field(ge=1)] = 3
    # Largest request body accepted (checkpoint uploads included).
    max_request_bytes: int = 600 * 1024 * 1024
    # Events and completion contexts older than this are deleted; episodes and aggregates stay.
    retention_days: float = 90.0
    retention_interval_s: float = 3600.0
    # A background pass (finalize, canary verdicts, retention) failing this many times in a row
    # makes /readyz answer 503 and the dashboard warn (backend/passes.py).
    stuck_after_failures: Annotated[int, Field(ge=1)] = 3
    # One log line per HTTP request. Off by default: /metrics counts requests, and at thousands of
    # event batches a second the log line costs more than storing the batch.
    access_log: bool = False

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/") or f"http://{self.host}:{self.port}"


class CanaryConfig(BaseModel):
    """How a gated candidate is tried on real users before it goes live (backend/canary.py)."""

    # Share of users (sticky, by hash of the user id) served the canary; 0 promotes on upload.
    share: float = 0.1
    # Error level of the always-valid sequential test (mSPRT), per metric.
    alpha: float = 0.05
    # Scale of the mixture prior on the difference, in standard deviations of the metric's per-person
    # means: a person's mean averages many episodes, so a change worth acting on is a larger share of
    # that spread than of one episode's (0.5: near the quickest for a 10% change in reward; README).
    effect_size: float = 0.5
    # No verdict before each arm has this many finalized episodes, and this many people (the test's
    # unit: each person's mean outcome is one observation).
    min_episodes: int = 50
    min_people: int = 5
    # Promote once both arms have this many episodes and no metric is significantly worse.
    max_episodes: int = 2000
    # After promotion, compare the new live version with its predecessor for this many episodes.
    watch_episodes: int = 2000
    interval_s: float = 10.0


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
    # Threads for the model's math on a CPU; 0: every core but one, which is left to the HTTP
    # server and the store. (A small model gains nothing from a second thread; the event loop does.)
    threads: Annotated[int, Field(ge=0)] = 0
    # The languages (LSP languageIds) this model serves; clients ask for no others by default. The
    # bootstrapped model knows Python only.
    languages: list[str] = Field(default_factory=lambda: ["python"])


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
    # After a rejection or ignore: how long what the user writes at the spot is collected.
    rewrite_window_s: float = 30.0
    # The language server waits this long before asking the backend (a newer request replaces it).
    debounce_ms: float = 30.0
    telemetry: bool = True
    request_timeout_s: float = 2.0
    flush_interval_s: float = 1.0
    user_id: str = ""
    # Where the language server keeps its event outbox and pseudonymous user id;
    # empty means platformdirs' user_state_dir("flywheel").
    state_dir: str = ""
    # The user's word per LSP languageId (true: ask even where the model does not serve it; false:
    # never), "*" for every language not named; unnamed ones follow what the backend serves.
    languages: dict[str, bool] = Field(default_factory=dict)
    # Path globs never sent to the backend, besides lsp_server/gate.py's (.env, key files, ...).
    exclude: list[str] = Field(default_factory=list)


class GuardConfig(BaseModel):
    """Which episodes an update may learn from (trainer/selection.py)."""

    # Episodes served by a version more than this many versions behind the live one are dropped.
    max_version_lag: int = 3
    # No user may make up more than this share of one update (applies once there are 2+ users)...
    max_user_share: float = 0.25
    # ...nor more than this many episodes of it (applies always, single-person installs too).
    max_user_episodes: int = 256
    # An update needs episodes from at least this many distinct users (1 for a single-person install).
    min_users: int = 1
    # Accepted faster than a person can read the suggestion: this floor plus this much per character.
    min_accept_ms: float = 150.0
    accept_ms_per_char: float = 5.0
    # A user whose accepts are mostly inhuman-speed is dropped whole.
    inhuman_user_share: float = 0.5
    # Accept-then-delete outliers: a user whose share of accepted-then-deleted suggestions exceeds the
    # median user's by this margin, counted once they have this many accepts.
    delete_outlier_margin: float = 0.4
    delete_min_accepts: int = 8
    # Per-token KL(parent ‖ candidate) one cycle may move the policy; exceeding it stops the update.
    kl_budget: float = 0.5


class GateConfig(BaseModel):
    """The eval gate a candidate passes before upload (trainer/gate.py)."""

    enabled: bool = True
    # Share of a cycle's episodes held out of training for the off-policy reward estimate.
    heldout_share: float = 0.2
    # The candidate's estimated mean reward may fall at most this far below the live version's.
    reward_margin: float = 0.05
    # Below this effective sample size the SNIS estimate is too noisy to fail a candidate on.
    min_ess: float = 8.0
    # Perplexity on the fixed held-out code set may rise at most this much over the base model's (a
    # hard outer limit), and inside it be worse than the parent's (the live version's) by at most
    # this much with 95% confidence (paired bootstrap over its windows): a fixed limit to the base
    # alone ratcheted, drift adding up until noise refused every update (trainer/gate.py).
    max_ppl_increase: float = 0.05
    max_ppl_increase_over_parent: float = 0.005
    ppl_chars: int = 12_000
    # Greedy continuations of the check's prompts (8 fixed, 24 from the held-out code) may loop on
    # at most this share of them more than the base model's.
    max_extra_loop_share: float = 0.1
    # Train the next cycle on this cycle's held-out episodes once the gate has used them
    # (trainer/heldout_carry.py): otherwise a fifth of every cycle's episodes is never learned from.
    train_heldout_later: bool = True


class TrainerConfig(BaseModel):
    objective: str = "pg"
    # Overrides of the objective's config dataclass (trainer/objectives/<objective>.py), for example
    # FLYWHEEL_TRAINER__PG__KL_COEF=0.1 or `[trainer.pg] kl_coef = 0.1`.
    pg: dict[str, float | str] = Field(default_factory=dict)
    kto: dict[str, float | str] = Field(default_factory=dict)
    dpo: dict[str, float | str] = Field(default_factory=dict)
    # Fit each candidate's cut (where serving stops its completions) to the cycle's outcomes
    # (trainer/stopping.py); off: a candidate keeps the live version's cut. Off by default: in
    # `make simulate` every cut fitted on one round's files (-4, -7) cost 10-30% of the characters
    # accepted on other files, though each raised the accept rate.
    learn_stop: bool = False
    # Fit each candidate's confidence floor (below it serving withholds a completion: an
    # abstention) to the cycle's outcomes (trainer/withholding.py); off: a candidate keeps the live
    # version's floor.
    learn_floor: bool = True
    # The floors are fitted on the last this many episodes trained on, not on one cycle's, and
    # move only once that evidence holds this many shown suggestions: in a few hundred, the
    # acceptances a floor would cost (a few in a hundred, and more on some files than on others)
    # often do not show at all.
    floor_history: Annotated[int, Field(ge=1)] = 2000
    floor_min_shown: Annotated[int, Field(ge=1)] = 800
    # Fit each candidate's learned show-or-abstain policy (a logistic filter and trigger over
    # features known at request time, trainer/show_policy_fit.py) to shown outcomes; where a version
    # has one, serving decides with it instead of the floors. Off: candidates carry none.
    show_policy: bool = True
    # Its evidence: the last this many episodes with a recorded serving decision; no policy until it
    # holds this many shown suggestions (and ten accepted).
    show_policy_history: Annotated[int, Field(ge=1)] = 4000
    show_policy_min_shown: Annotated[int, Field(ge=1)] = 200
    # Chance that a suggestion the policy would withhold (a call its trigger would skip) is shown
    # (made) anyway, its propensity recorded: without it a threshold set too high never learns so.
    show_policy_explore: Annotated[float, Field(ge=0, le=0.5)] = 0.03
    # At most this many episodes per cycle; the rest wait for the next one.
    max_episodes: int = 2000
    guards: GuardConfig = Field(default_factory=GuardConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    # Continuous mode: run a cycle once this many new episodes are in, or this much time has passed.
    min_episodes: int = 16
    interval_s: float = 300.0
    poll_s: float = 10.0
    learning_rate: float = 2e-4
    batch_size: int = 8
    epochs: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    # peft's target_modules: "all-linear" (attention and MLP: the MLP is where a model keeps what it
    # knows, and the correction term teaches content), a regex, or a list of module names.
    lora_target_modules: str | list[str] = "all-linear"
    # General code for the PG objective's replay term (trainer/replay.py): "stdlib" (the standard
    # library outside the held-out split) and/or directories of Python files.
    replay_sources: list[str] = Field(default_factory=lambda: ["stdlib"])
    device: str = "auto"


class ServingConfig(BaseModel):
    """Which engine decodes completions (backend/engine.py), and how to reach vLLM when it is vLLM."""

    # "inprocess": Flywheel's own continuous batching over transformers, in a process of the
    # backend's (the embedded default, for a laptop CPU). "vllm": a vLLM OpenAI server decodes
    # (backend/vllm_engine.py), for real code models, many users and GPUs.
    engine: Literal["inprocess", "vllm"] = "inprocess"
    # vLLM servers already running, each serving the model with Flywheel's flags (see
    # `backend.vllm_server.server_command`); empty: the backend starts and owns one itself.
    vllm_urls: list[str] = Field(default_factory=list)
    # The Python of the vLLM environment (vLLM and vllm_plugin/ installed; `make vllm-env`).
    vllm_python: str = ".venv-vllm/bin/python"
    # The bearer token the servers ask for (vLLM's --api-key). A server Flywheel starts gets a
    # random one of its own: its runtime adapter loading takes any path on the machine.
    vllm_api_key: str = ""
    # The server Flywheel starts: its port (0: a free one), context length (0: the model's), LoRA
    # room (the largest adapter rank it takes: at least trainer.lora_r; adapters on the device at
    # once), dtype ("auto": float32 on vLLM's CPU build, where bf16 records log-probs up to 0.026 from
    # the trainer's and, with LoRA, dies of an illegal instruction on some CPUs; the model's own on a
    # GPU), and anything else for its command line.
    vllm_port: Annotated[int, Field(ge=0)] = 0
    vllm_max_model_len: Annotated[int, Field(ge=0)] = 0
    vllm_max_lora_rank: Annotated[int, Field(ge=1)] = 16
    vllm_max_loras: Annotated[int, Field(ge=1)] = 4
    vllm_dtype: str = "auto"
    vllm_args: list[str] = Field(default_factory=list)
    # How long a server may take to load its model; how often each server's health is asked.
    vllm_start_timeout_s: float = 600.0
    vllm_health_interval_s: float = 1.0


class StoreConfig(BaseModel):
    """Where the backend keeps completions, events, episodes and checkpoints' records (backend/store/)."""

    # Empty: SQLite in the data directory, for one backend. "postgresql://user@host:5432/flywheel":
    # a PostgreSQL database that several backends share (its password from ~/.pgpass or
    # PGPASSWORD rather than the URL); the schema is created and migrated on start.
    url: str = ""
    # Connections each backend keeps open to PostgreSQL.
    pool_size: Annotated[int, Field(ge=1)] = 8


class CheckpointsConfig(BaseModel):
    # Where uploaded adapters are written (atomically) and read; empty: checkpoints/ in the data
    # directory. Several backends need one they all reach at the same path (a shared volume).
    dir: str = ""
    # How often a backend reads the registry to serve the live and canary versions another
    # backend moved (a checkpoint uploaded to, or promoted by, a replica).
    poll_s: Annotated[float, Field(gt=0)] = 2.0


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
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    checkpoints: CheckpointsConfig = Field(default_factory=CheckpointsConfig)
    # Workspace files (./flywheel.toml of a repository) the language server may take the backend's
    # URL and token from; read from the user's own file only (core/config_file.py).
    trusted_configs: list[str] = Field(default_factory=list)

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
        found = config_file.find()
        if found is None:
            return tuple(sources)
        data = config_file.read(found.path, settings_cls)
        if found.workspace and not _TRUST_WORKSPACE.get() and not config_file.trusted(found.path):
            # A repository's own file, read by the language server: its routed keys come from the
            # user's own file instead (core/config_file.py).
            data = config_file.without_routed(data, found.path)
            own = config_file.user_file()
            if own.is_file():
                routed = config_file.routed_only(config_file.read(own, settings_cls))
                sources.append(InitSettingsSource(settings_cls, init_kwargs=routed))
        sources.insert(2, InitSettingsSource(settings_cls, init_kwargs=data))
        return tuple(sources)

    @property
    def state_dir(self) -> Path:
        path = self.data_dir or Path(platformdirs.user_data_dir(APP_NAME))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def access_token(self, role: str) -> str:
        """The token to send: the configured one, else the local one for `role` (admin, client)."""
        return self.backend.token or local_tokens.read_token(self.state_dir, role)

    @property
    def base_model(self) -> str:
        """What the backend serves: the configured Hub id or directory, else the bootstrapped model."""
        return self.model.name or str(self.default_model_dir)

    @property
    def database_path(self) -> Path:
        return self.state_dir / "flywheel.sqlite3"

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.checkpoints.dir) if self.checkpoints.dir else self.state_dir / "checkpoints"

    @property
    def default_model_dir(self) -> Path:
        return self.state_dir / "models" / "bootstrap"

    @property
    def trainer_dir(self) -> Path:
        return self.state_dir / "trainer"


def load_settings(trust_workspace: bool = True, **overrides: object) -> Settings:
    """The settings; a wrong key or value raises ConfigError, whose message is one line naming it.
    `trust_workspace=False` (the language server): a ./flywheel.toml the user has not trusted may not
    set where code and tokens go."""
    token = _TRUST_WORKSPACE.set(trust_workspace)
    try:
        return Settings(**overrides)
    except ValidationError as error:
        found = config_file.find()
        raise ConfigError(config_file.describe(error, found.path if found else None)) from None
    finally:
        _TRUST_WORKSPACE.reset(token)
