"""The backend's HTTP API: completions, outcome events, episodes, checkpoints, trainer status.

The admin dashboard, its actions and /metrics live in backend/admin_routes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError

from backend import admin_routes, checkpoints, compat_routes, tabby
from backend.access import AccessControl, allowed_hosts
from backend.auth import Authenticator, ensure_tokens
from backend.completing import serve
from backend.completions import Completions, Cut
from backend.deps import Caller, State, admin_only, client_only
from backend.finalize import run_finalizer
from backend.lifecycle import Lifecycle
from backend.limits import BodyLimit
from backend.metrics import Metrics
from backend.passes import CANARY, FINALIZE, RETENTION, Passes
from backend.retention import run_retention
from backend.sessions import Sessions
from backend.state import BackendState, make_engine
from backend.store import open_store
from core.config import Settings
from core.wire import (
    ADAPTER_FILES,
    API_PREFIX,
    TRAINER_STATUS_PATH,
    CheckpointInfo,
    CheckpointMetadata,
    CompleteRequest,
    CompleteResponse,
    EpisodesPage,
    EventsRequest,
    EventsResponse,
    ModelInfo,
    TrainerReport,
    parse_events,
)

log = logging.getLogger(__name__)
TRAINER_STATUS = "trainer_status"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything opened is closed again whatever fails after it: the store's thread alone
        # would keep a backend whose model failed to load running, serving nothing.
        async with contextlib.AsyncExitStack() as opened:
            store = await open_store(settings)
            opened.push_async_callback(store.close)
            # Before the model loads: a backend that would serve strangers stops at once.
            await ensure_tokens(store, settings)
            completions = Completions(make_engine(settings))
            opened.push_async_callback(completions.close)
            await completions.start()
            lifecycle = Lifecycle(settings, store, completions)
            await lifecycle.apply_routing()
            auth = Authenticator(store, settings.backend.token, settings.backend.metrics_token)
            passes = Passes(settings.backend.stuck_after_failures)
            metrics = Metrics(completions, passes)
            app.state.backend = BackendState(
                settings,
                store,
                completions,
                lifecycle,
                auth,
                Sessions(),
                metrics,
                settings.base_model,
                passes,
            )
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(run_finalizer(store, settings, stop, passes[FINALIZE])),
                asyncio.create_task(lifecycle.run(stop, passes[CANARY])),
                asyncio.create_task(run_retention(store, settings, stop, passes[RETENTION])),
            ]
            if settings.store.url:  # a shared store: other backends move versions too
                tasks.append(asyncio.create_task(lifecycle.follow(stop)))
            log.info("backend ready: model %s, live version %s", settings.base_model, completions.policy.live)
            try:
                yield
            finally:
                stop.set()
                await asyncio.gather(*tasks)

    app = FastAPI(title="Flywheel backend", lifespan=lifespan)
    app.add_middleware(BodyLimit, upload_bytes=settings.backend.max_request_bytes)
    # Added last, so it runs first: nothing else sees a request the door refuses.
    app.add_middleware(
        AccessControl, hosts=allowed_hosts(settings.backend.allowed_hosts, settings.backend.host)
    )
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.include_router(router)
    app.include_router(admin_routes.router)
    app.include_router(compat_routes.router)
    return app


async def _validation_failed(request: Request, error: Exception) -> Response:
    """FastAPI's 422 without the inputs: an input of NaN or infinity (valid in Python's JSON, not in
    an answer) or bytes that are not UTF-8 made the client's mistake a 500 (tests/backend/test_fuzz.py)."""
    assert isinstance(error, RequestValidationError)
    details = [{key: value for key, value in e.items() if key != "input"} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(details)})


def _json(model: BaseModel) -> Response:
    """The model serialized once: returned as a model, FastAPI would validate it again first (the
    two hot routes answer hundreds of times a second)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI request body for an endpoint that reads and validates its body itself."""
    return {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}


# The API's routes; create_app includes them.
router = APIRouter()


# Alive: 200 while the model serves, whatever the background passes do (a supervisor that
# restarts on it would mend none of their failures); `passes` says how each is doing.
@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    if state.completions.failure is not None:
        raise HTTPException(503, f"model unavailable: {state.completions.failure}")
    policy = state.completions.policy
    return {
        "status": "ok",
        "live_version": policy.live,
        "canary_version": policy.canary,
        "passes": state.passes.report(),
    }


# Ready: the model serves and no background pass is stuck (backend/passes.py); 503 says why.
@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    ready, body = state.passes.readiness(state.completions.failure)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.post(f"{API_PREFIX}/complete", dependencies=client_only, response_model=CompleteResponse)
async def complete(body: CompleteRequest, request: Request, state: State, caller: Caller) -> Response:
    return _json(await serve(state, body, caller.person, request.is_disconnected))


# The body is read raw: a batch whose events are all valid is parsed and checked in one pass
# (wire.parse_events), three times faster than FastAPI's parse followed by one check per event.
@router.post(
    f"{API_PREFIX}/events",
    dependencies=client_only,
    response_model=EventsResponse,
    openapi_extra={"requestBody": _json_body(EventsRequest)},
)
async def events(request: Request, state: State) -> Response:
    raw = await request.body()
    try:
        valid, refused = parse_events(raw)
    except ValidationError as error:
        # Tabby's clients post their events one at a time here (backend/compat_routes.py).
        if tabby.is_event(body := _json_or_none(raw)):
            return await compat_routes.tabby_event(body, request, state)
        raise RequestValidationError(error.errors(include_url=False)) from None
    result = await state.store.store_events(valid, refused, received_at=time.time())
    state.metrics.events(result)
    return _json(result)


@router.get(f"{API_PREFIX}/episodes", dependencies=admin_only)
async def episodes(
    state: State,
    cursor: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    # The trainer's feed leaves evaluation episodes out; the simulator measures them with this.
    include_evaluation: bool = False,
) -> EpisodesPage:
    return await state.store.episodes_after(cursor, limit, include_evaluation)


@router.get(f"{API_PREFIX}/model", dependencies=client_only)
async def model_info(state: State) -> ModelInfo:
    policy = state.completions.policy
    cut = policy.cuts.get(policy.live, Cut())
    return ModelInfo(
        base_model=state.base_model,
        live_version=policy.live,
        fim=policy.fim,
        temperature=policy.temperature,
        canary_version=policy.canary,
        stop_logprob=cut.stop_logprob,
        min_confidence=cut.min_confidence,
        show_policy=cut.show_policy,
        languages=state.settings.model.languages,
    )


@router.get(f"{API_PREFIX}/checkpoints", dependencies=client_only)
async def list_checkpoints(state: State) -> list[CheckpointInfo]:
    return await state.store.checkpoints()


@router.post(f"{API_PREFIX}/checkpoints", dependencies=admin_only)
async def upload_checkpoint(
    state: State,
    metadata: Annotated[str, Form()],
    adapter_config: Annotated[UploadFile, File(alias="adapter_config.json")],
    adapter_model: Annotated[UploadFile, File(alias="adapter_model.safetensors")],
) -> CheckpointInfo:
    try:
        meta = CheckpointMetadata.model_validate_json(metadata)
    except ValidationError as error:
        # FastAPI's own 422, as the schema documents it: each error located in the field.
        errors = error.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**e, "loc": ("body", "metadata", *e["loc"])} for e in errors]
        ) from error
    files = dict(zip(ADAPTER_FILES, [await adapter_config.read(), await adapter_model.read()], strict=True))
    try:
        version = await state.lifecycle.take_upload(meta, files, state.base_model)
    except checkpoints.CheckpointError as error:
        raise HTTPException(status_code=400, detail=str(error)) from error
    info = await state.store.checkpoint(version)
    assert info is not None
    return info


@router.get(f"{API_PREFIX}/checkpoints/{{version}}/files/{{name}}", dependencies=admin_only)
async def checkpoint_file(version: str, name: str, state: State) -> FileResponse:
    try:
        path = checkpoints.checkpoint_file(state.settings.checkpoints_dir, version, name)
    except checkpoints.CheckpointError as error:
        raise HTTPException(status_code=404, detail=str(error)) from error
    return FileResponse(path)


@router.post(TRAINER_STATUS_PATH, dependencies=admin_only)
async def trainer_status(report: TrainerReport, state: State) -> dict[str, str]:
    await state.store.set_setting(TRAINER_STATUS, report.model_dump())
    return {"status": "recorded"}
