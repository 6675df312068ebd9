"""The backend's HTTP API: completions, outcome events, episodes, checkpoints, health, admin."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import ValidationError

from backend import admin, checkpoints
from backend.finalize import run_finalizer
from backend.serving import Policy, PolicyWorker
from backend.store import Store
from backend.wire import (
    ADAPTER_FILES,
    API_PREFIX,
    CheckpointInfo,
    CheckpointMetadata,
    CompleteRequest,
    CompleteResponse,
    EpisodesPage,
    EventsRequest,
    EventsResponse,
    ModelInfo,
)
from flywheel.config import Settings

log = logging.getLogger(__name__)


@dataclass
class BackendState:
    settings: Settings
    store: Store
    worker: PolicyWorker
    base_model: str
    # Serializes uploads so version numbers and swaps happen one at a time.
    checkpoint_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        base_model = settings.base_model
        store = await Store.open(settings.database_path)
        policy = await asyncio.to_thread(
            Policy,
            base_model,
            fim=settings.model.fim,
            temperature=settings.model.temperature,
            max_new_tokens=settings.model.max_new_tokens,
            context_tokens=settings.model.context_tokens,
            device=settings.model.device,
        )
        worker = PolicyWorker(policy)
        live = await store.live_version()
        await worker.use_adapter(live, await store.checkpoint_path(live))
        state = BackendState(settings=settings, store=store, worker=worker, base_model=base_model)
        app.state.backend = state
        stop = asyncio.Event()
        finalizer = asyncio.create_task(run_finalizer(store, settings, stop))
        log.info("backend ready: model %s, live version %s", base_model, live)
        try:
            yield
        finally:
            stop.set()
            await finalizer
            worker.close()
            await store.close()

    app = FastAPI(title="Flywheel backend", lifespan=lifespan)
    _add_routes(app)
    return app


def get_state(request: Request) -> BackendState:
    return request.app.state.backend


def require_client(request: Request, state: Annotated[BackendState, Depends(get_state)]) -> None:
    """Checks the bearer token when the backend is configured with one."""
    expected = state.settings.backend.token
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token")


State = Annotated[BackendState, Depends(get_state)]
client_only = [Depends(require_client)]


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz")
    async def healthz(state: State) -> dict[str, str]:
        return {"status": "ok", "live_version": state.worker.policy.version}

    @app.post(f"{API_PREFIX}/complete", dependencies=client_only)
    async def complete(body: CompleteRequest, state: State) -> CompleteResponse:
        started = time.perf_counter()
        sample = await state.worker.complete(body.context.prefix, body.context.suffix, body.max_new_tokens)
        # Read after sampling: the worker thread is the only place the version changes.
        version = state.worker.policy.version
        latency_ms = (time.perf_counter() - started) * 1000
        completion_id = uuid.uuid4().hex
        await state.store.record_completion(
            completion_id=completion_id,
            user_id=body.user_id,
            model_version=version,
            context=body.context.model_dump(),
            prompt_ids=sample.prompt_ids,
            completion_ids=sample.completion_ids,
            token_logprobs=sample.token_logprobs,
            temperature=state.worker.policy.temperature,
            text=sample.text,
            created_at=time.time(),
            latency_ms=latency_ms,
        )
        return CompleteResponse(
            completion_id=completion_id,
            text=sample.text,
            model_version=version,
            token_logprobs=sample.token_logprobs,
            latency_ms=latency_ms,
        )

    @app.post(f"{API_PREFIX}/events", dependencies=client_only)
    async def events(body: EventsRequest, state: State) -> EventsResponse:
        return await state.store.add_events(body.events, received_at=time.time())

    @app.get(f"{API_PREFIX}/episodes", dependencies=client_only)
    async def episodes(
        state: State,
        cursor: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    ) -> EpisodesPage:
        return await state.store.episodes_after(cursor, limit)

    @app.get(f"{API_PREFIX}/model", dependencies=client_only)
    async def model_info(state: State) -> ModelInfo:
        policy = state.worker.policy
        return ModelInfo(
            base_model=state.base_model,
            live_version=policy.version,
            fim=policy.fim.name,
            temperature=policy.temperature,
        )

    @app.get(f"{API_PREFIX}/checkpoints", dependencies=client_only)
    async def list_checkpoints(state: State) -> list[CheckpointInfo]:
        return await state.store.checkpoints()

    @app.post(f"{API_PREFIX}/checkpoints", dependencies=client_only)
    async def upload_checkpoint(
        state: State,
        metadata: Annotated[str, Form()],
        adapter_config: Annotated[UploadFile, File(alias="adapter_config.json")],
        adapter_model: Annotated[UploadFile, File(alias="adapter_model.safetensors")],
    ) -> CheckpointInfo:
        try:
            meta = CheckpointMetadata.model_validate_json(metadata)
        except ValidationError as error:
            raise HTTPException(
                status_code=422, detail=f"bad metadata: {error.errors()[0]['msg']}"
            ) from error
        files = dict(
            zip(ADAPTER_FILES, [await adapter_config.read(), await adapter_model.read()], strict=True)
        )
        async with state.checkpoint_lock:
            try:
                checkpoints.validate_upload(files, meta, state.base_model)
                version = await state.store.next_version()
                path = await asyncio.to_thread(
                    checkpoints.write_checkpoint, state.settings.checkpoints_dir, version, files, meta
                )
            except checkpoints.CheckpointError as error:
                raise HTTPException(status_code=400, detail=str(error)) from error
            await state.store.add_checkpoint(
                version, meta.parent_version, str(path), meta.metrics, reason="uploaded by trainer"
            )
            try:
                await state.worker.use_adapter(version, path)
            except Exception as error:  # a file that passed the checks but does not fit the model
                await state.store.transition(version, "rejected", f"adapter failed to load: {error}")
                raise HTTPException(status_code=400, detail=f"adapter failed to load: {error}") from error
            # No gate or canary yet: a loaded candidate goes live at once.
            await state.store.transition(version, "live", "promoted on upload (no gate configured)")
        info = await state.store.checkpoint(version)
        assert info is not None
        return info

    @app.get(f"{API_PREFIX}/checkpoints/{{version}}/files/{{name}}", dependencies=client_only)
    async def checkpoint_file(version: str, name: str, state: State) -> FileResponse:
        try:
            path = checkpoints.checkpoint_file(state.settings.checkpoints_dir, version, name)
        except checkpoints.CheckpointError as error:
            raise HTTPException(status_code=404, detail=str(error)) from error
        return FileResponse(path)

    @app.get("/admin", response_class=HTMLResponse)
    async def admin_page(state: State) -> str:
        stats = await state.store.stats()
        history = await state.store.checkpoints()
        return admin.render(state.worker.policy.version, state.base_model, stats, history)

    @app.get("/admin/stats.json")
    async def admin_stats(state: State) -> dict:
        return await state.store.stats()
