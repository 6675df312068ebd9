"""What a running backend holds: the parts every route reaches through `deps.State`.

Its own module so that the routes (app.py, admin_routes.py) and their dependencies (deps.py) all
name it without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Types only: this module stays importable without the model's side of the backend.
    from backend.auth import Authenticator
    from backend.completions import Completions
    from backend.engine import Engine
    from backend.lifecycle import Lifecycle
    from backend.metrics import Metrics
    from backend.passes import Passes
    from backend.sessions import Sessions
    from backend.store import Store
    from core.config import Settings


@dataclass
class BackendState:
    settings: Settings
    store: Store
    completions: Completions
    lifecycle: Lifecycle
    auth: Authenticator
    sessions: Sessions
    metrics: Metrics
    base_model: str
    passes: Passes


def make_engine(settings: Settings) -> Engine:
    """The engine `serving.engine` names (backend/engine.py); only its modules are imported."""
    if settings.serving.engine == "vllm":
        from backend.vllm_engine import VllmEngine

        return VllmEngine(
            settings.base_model,
            settings.model,
            settings.serving,
            trainer_rank=settings.trainer.lora_r,
            log_path=settings.state_dir / "vllm-server.log",
        )
    from backend.batching import InProcessEngine
    from backend.model_process import LoopConfig

    backend = settings.backend
    return InProcessEngine(
        LoopConfig(
            settings.base_model,
            settings.model,
            backend.batch_window_ms,
            backend.max_batch,
            backend.join_min,
            backend.join_wait_steps,
        )
    )
