"""The vLLM engine (backend/engine.py): completions decoded by vLLM OpenAI servers, over HTTP.

The backend process holds no model: the servers do, each either started by the backend
(backend/vllm_server.py) or run elsewhere (`serving.vllm_urls`, several for several servers,
requests spread over the healthy ones). What it keeps is the tokenizer, to build each prompt as the
in-process engine does (core/prompts.py; ids are sent, never text) and to read the tokens that come
back.

Every version is a LoRA adapter loaded by name at run time on every server (/v1/load_lora_adapter),
and a request names its version as its `model`, so rows of different versions share vLLM's batches.
Such loads live in a server's memory only: a server that was down gets every version in service back
before it is routed to again (the watchdog), and one that restarted unseen answers a request for a
version it lost with a 404, upon which the version is loaded again and the request retried once.
While no server is up, requests fail with EngineUnavailable (the route's 503) and nothing else does.

Log-probs are the model's own, tempered and unrestricted (engine.Generation): the servers divide the
logits by the temperature inside the model (vllm_plugin/, flywheel_vllm.temperature), return the
raw log-probs (taken before any logits processor) and sample at temperature 1, so the distribution
sampled from is softmax(logits / T), the in-process engine's. Healing holds the first tokens through
a logits processor of core/healing.py's rule (flywheel_vllm.healing), after the raw log-probs.
Every request names the temperature, which a server tempering otherwise refuses, and each server is
probed (asked to heal a text) before it takes traffic: one without Flywheel's flags and plugin is
refused rather than record other log-probs.

The rules vLLM cannot apply while decoding are applied to the stream as it comes (one token per
server-sent event) and end it early by closing it, which makes vLLM abort the row: the end of a
block (a mid-line row also stops at vLLM's "\\n" stop string), the learned cut (the row ends before
its first token below it, as in backend/decoding.py) and the confidence floor or the learned filter
(a row whose first LEADING_TOKENS tokens it withholds: nothing more of it is decoded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backend import stops
from backend.engine import (
    ClientGone,
    EngineInfo,
    EngineRequest,
    EngineUnavailable,
    Generation,
    Gone,
    cut_before,
    withheld_whatever_follows,
)
from backend.vllm_server import OwnedServer
from core.config import ModelConfig, ServingConfig
from core.prompts import build_prompt_ids, detect_fim_format
from core.wire import BASE_VERSION

log = logging.getLogger(__name__)

# vllm_plugin/flywheel_vllm/__init__.py: the per-request arguments naming the healed text, and
# the temperature the server must temper its logits at (it refuses the request otherwise).
HEALED_ARG = "flywheel_healed"
TEMPERATURE_ARG = "flywheel_temperature"
# What a probe asks a server to heal: a first token that does not spell it means no healing.
PROBE_HEALED = "Zq"
# How long a request may wait on a server's answer (a stream's next token included).
REQUEST_TIMEOUT_S = 120.0


class VllmUnavailable(EngineUnavailable):
    """No vLLM server can take the request now."""


class _VersionLost(Exception):
    """The server does not hold the version asked for (it restarted since it was loaded)."""


@dataclass
class _Server:
    url: str
    client: httpx.AsyncClient
    # Requests go only to a routable server: up, and holding every version in service.
    routable: bool = False
    installed: set[str] = field(default_factory=set)
    # Loads and the watchdog's re-installs one at a time, so neither sees the other half done.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_flight: int = 0
    sent: int = 0  # requests sent to it, ever
    # Why it is not routable, for `failure` and the logs.
    trouble: str = ""


class _Row:
    """One request's tokens as they stream in, and where it ends: backend/decoding.py's rules
    (RowStop, Row.cut_before, Row.withheld_whatever_follows), applied to tokens vLLM sampled."""

    def __init__(
        self, engine: VllmEngine, request: EngineRequest, healed: str, cap: int, asked: float
    ) -> None:
        self.texts = engine.token_texts
        self.eos = engine.eos_token_id
        self.request = request
        self.line_prefix = request.stop.line_prefix(healed)
        self.cap = cap
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        self.asked = asked  # time.perf_counter() when `complete` was called
        self.first_token_s: float | None = None

    def take(self, token: int, logprob: float) -> bool:
        """The next sampled token; True when the row is complete (with it, or before it: the cut)."""
        request = self.request
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.asked
        if cut_before(request.stop_logprob, logprob):
            return True
        self.tokens.append(token)
        self.logprobs.append(logprob)
        piece = self.texts.text(token)
        self.text += piece
        return (
            token == self.eos
            or len(self.tokens) >= self.cap
            or (
                "\n" in piece
                and stops.stop_index(self.text, request.stop.mid_line, self.line_prefix) is not None
            )
            or withheld_whatever_follows(self.logprobs, request.showing)
        )


class VllmEngine:
    """The engine over vLLM servers. `dropped`: requests whose client had gone before they were
    sent. `batches`: requests sent while none was in flight (vLLM's own scheduler steps are not
    visible over HTTP; its /metrics has them). `failure`: set while no server can take requests."""

    # Known once started.
    info: EngineInfo

    def __init__(
        self,
        model_name: str,
        model: ModelConfig,
        serving: ServingConfig,
        *,
        trainer_rank: int = 16,
        log_path: Path | None = None,
    ) -> None:
        self.model_name = model_name
        self.model = model
        self.serving = serving
        self.trainer_rank = trainer_rank
        self.log_path = log_path or Path("vllm-server.log")
        self.dropped = 0  # requests dropped because their client had gone
        # Requests sent while none was in flight: vLLM's own batches are not visible from here.
        self.batches = 0
        self.owned: OwnedServer | None = None
        self.servers: list[_Server] = []
        self._adapters: dict[str, Path] = {}
        self._base = ""  # the base model's name on the servers
        self._max_model_len = 0
        self._in_flight = 0
        self._watchdog: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._closing = False

    # Starting and stopping.

    async def start(self) -> EngineInfo:
        """Start the owned server (or reach `serving.vllm_urls`) and the tokenizer, at once."""
        headers = {}
        urls = list(self.serving.vllm_urls)
        if not urls:
            self.owned = OwnedServer(
                self.model_name, self.serving, self.model.temperature, self.trainer_rank, self.log_path
            )
            urls = [self.owned.url]
        key = self.owned.api_key if self.owned else self.serving.vllm_api_key
        if key:
            headers["authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=5)
        # One connection per request in flight: a stream closed early is a connection closed.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self.servers = [
            _Server(
                url.rstrip("/"),
                httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout, limits=limits),
            )
            for url in urls
        ]
        tokenizer = asyncio.create_task(asyncio.to_thread(self._load_tokenizer))
        try:
            if self.owned is not None:
                await self.owned.start()
            await self._first_ready()
            fim = await tokenizer
            for server in self.servers:
                if server.routable:
                    await self._probe(server)
        except BaseException:
            tokenizer.cancel()
            await self.close()
            raise
        self.info = EngineInfo(self.model.temperature, fim)
        self._watchdog = asyncio.create_task(self._watch(), name="vllm-watchdog")
        return self.info

    async def _first_ready(self) -> None:
        """Until one server is ready; the others join when the watchdog finds them up. None ready
        within `vllm_start_timeout_s`: the first one's reason."""
        waiting = [asyncio.create_task(self._await_ready(server)) for server in self.servers]
        pending = set(waiting)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(task.exception() is None for task in done):
                    return
            error = waiting[0].exception()
            assert error is not None
            raise error
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _load_tokenizer(self) -> str:
        from transformers import AutoTokenizer

        from core.healing import TokenTexts

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        self.fim = detect_fim_format(self.tokenizer, self.model.fim)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.token_texts = TokenTexts(self.tokenizer, self.eos_token_id)
        return self.fim.name

    async def _await_ready(self, server: _Server) -> None:
        """Until the server answers (an owned one already does); then what it serves."""
        deadline = time.monotonic() + self.serving.vllm_start_timeout_s
        while True:
            try:
                models = await self._models(server)
                break
            except (httpx.HTTPError, VllmUnavailable) as error:
                if time.monotonic() > deadline:
                    raise VllmUnavailable(
                        f"the model {self.model_name} could not be served: no vLLM server answered at "
                        f"{server.url} within {self.serving.vllm_start_timeout_s:.0f} s ({error})"
                    ) from error
                await asyncio.sleep(0.5)
        base = [entry for entry in models if not entry.get("parent")]
        if not base:
            raise VllmUnavailable(f"the vLLM server at {server.url} lists no base model")
        name, length = base[0]["id"], int(base[0].get("max_model_len") or 0)
        if self._base and name != self._base:
            raise VllmUnavailable(f"the vLLM servers serve different models: {self._base} and {name}")
        self._base = name
        self._max_model_len = min(self._max_model_len or length, length)
        server.installed = {entry["id"] for entry in models if entry.get("parent")} & set(self._adapters)
        server.routable = True
        server.trouble = ""

    async def close(self) -> None:
        self._closing = True
        for task in (self._watchdog, self._restarting):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for server in self.servers:
            server.routable = False
            await server.client.aclose()
        if self.owned is not None:
            await self.owned.stop()

    @property
    def failure(self) -> Exception | None:
        """Why nothing can be served now: no server is up (each one's reason); None while one is."""
        if not self.servers or any(server.routable for server in self.servers):
            return None
        reasons = "; ".join(f"{server.url}: {server.trouble or 'not ready'}" for server in self.servers)
        return VllmUnavailable(f"no vLLM server serves {self.model_name} now ({reasons})")

    # Versions.

    async def install(self, version: str, path: Path) -> None:
        """Load the adapter on every server that is up; one that is down gets it when it is back."""
        if version == BASE_VERSION:
            return
        self._adapters[version] = path
        results = await asyncio.gather(
            *(self._install_on(server, version, path) for server in self.servers), return_exceptions=True
        )
        failed = [error for error in results if isinstance(error, BaseException)]
        refused = [error for error in failed if not isinstance(error, httpx.TransportError)]
        if refused:
            raise refused[0]
        if failed and len(failed) == len(results):
            raise VllmUnavailable(f"no vLLM server is up to take version {version}: {failed[0]}")

    async def _install_on(self, server: _Server, version: str, path: Path) -> None:
        async with server.lock:
            try:
                await self._load(server, version, path)
            except httpx.TransportError as error:
                self._lost(server, error)
                raise
            server.installed.add(version)

    async def _load(self, server: _Server, version: str, path: Path) -> None:
        response = await server.client.post(
            "/v1/load_lora_adapter", json={"lora_name": version, "lora_path": str(path)}
        )
        if response.status_code == 200 or (
            response.status_code == 400 and "already been loaded" in response.text
        ):
            return
        if response.status_code < 500:
            raise ValueError(f"vLLM at {server.url} refused version {version}: {_message(response)}")
        raise RuntimeError(f"vLLM at {server.url} failed to load version {version}: {_message(response)}")

    async def remove(self, version: str) -> None:
        """Unload the adapter everywhere; a server that is down has lost it already."""
        self._adapters.pop(version, None)
        if version == BASE_VERSION:
            return
        for server in self.servers:
            async with server.lock:
                server.installed.discard(version)
                with contextlib.suppress(httpx.TransportError):
                    response = await server.client.post(
                        "/v1/unload_lora_adapter", json={"lora_name": version}
                    )
                    if response.status_code not in (200, 404):
                        log.warning(
                            "vLLM at %s did not unload %s: %s", server.url, version, _message(response)
                        )

    # Requests.

    async def complete(self, request: EngineRequest, gone: Gone | None = None) -> Generation:
        asked = time.perf_counter()
        if gone is not None and await _gone(gone):
            self.dropped += 1
            raise ClientGone("the client has gone")
        healed, prompt = self._prompt(request)
        cap = request.stop.max_new_tokens or self.model.max_new_tokens
        cap = max(1, min(cap, self._max_model_len - len(prompt))) if self._max_model_len else cap
        body: dict[str, Any] = {
            "model": self._base if request.version == BASE_VERSION else request.version,
            "prompt": prompt,
            "max_tokens": cap,
            # The logits are divided by the temperature in the model (flywheel_vllm.temperature).
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,
            "logprobs": 0,
            "return_token_ids": True,
            "stream": True,
        }
        if request.stop.mid_line:
            body["stop"] = ["\n"]
        body["vllm_xargs"] = {TEMPERATURE_ARG: self.model.temperature}
        if healed:
            body["vllm_xargs"][HEALED_ARG] = healed
        tried: set[str] = set()
        lost: _Server | None = None
        while True:
            server = self._pick(request.version, tried)
            row = _Row(self, request, healed, cap, asked)
            try:
                if lost is server:
                    await self._reinstall(server, request.version)
                await self._stream(server, body, row)
                break
            except _VersionLost:
                if lost is server:
                    raise VllmUnavailable(f"vLLM at {server.url} keeps losing {request.version}") from None
                lost = server
            except httpx.ReadTimeout as error:
                # Slow (a long queue), not down: the server keeps its place.
                raise VllmUnavailable(f"vLLM at {server.url} did not answer in time") from error
            except httpx.TransportError as error:
                # Down (or restarting): the request goes to another server, if one is up.
                self._lost(server, error)
                tried.add(server.url)
        return Generation(
            version=request.version,
            prompt_ids=prompt,
            completion_ids=row.tokens,
            token_logprobs=row.logprobs,
            text=self.tokenizer.decode(row.tokens, skip_special_tokens=True),
            healed=healed,
            first_token_s=row.first_token_s,
        )

    def _prompt(self, request: EngineRequest) -> tuple[str, list[int]]:
        """The healed text and the prompt's ids, as the in-process engine makes them (Decoding._row)."""
        healed = request.healed
        # A healed text these tokens cannot spell stays in the prompt rather than silence every answer.
        if healed and not len(self.token_texts.allowed(healed, may_end=False)):
            healed = ""
        prefix = request.prefix[: len(request.prefix) - len(healed)]
        ids = build_prompt_ids(self.tokenizer, self.fim, prefix, request.suffix, self.model.context_tokens)
        return healed, ids

    def _pick(self, version: str, tried: set[str]) -> _Server:
        """The routable server with the fewest requests in flight, among those holding `version`
        if any does."""
        up = [server for server in self.servers if server.routable and server.url not in tried]
        if not up:
            raise VllmUnavailable(str(self.failure or f"no vLLM server is up for {self.model_name}"))
        holding = [server for server in up if version == BASE_VERSION or version in server.installed]
        return min(holding or up, key=lambda server: server.in_flight)

    async def _stream(self, server: _Server, body: dict[str, Any], row: _Row) -> None:
        """Read the row's tokens until it is complete; leaving early closes the stream, and vLLM
        aborts the request."""
        if not self._in_flight:
            self.batches += 1
        self._in_flight += 1
        server.in_flight += 1
        server.sent += 1
        try:
            async with server.client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    _raise_for(response, server)
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise RuntimeError(f"vLLM at {server.url} failed a request: {chunk['error']}")
                    choice = chunk["choices"][0]
                    tokens = choice.get("token_ids") or []
                    logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
                    for token, logprob in zip(tokens, logprobs, strict=True):
                        if row.take(token, logprob):
                            return
        finally:
            self._in_flight -= 1
            server.in_flight -= 1

    # Servers going down and coming back.

    def _lost(self, server: _Server, error: Exception) -> None:
        if server.routable:
            log.error("vLLM server %s is down (%s): no requests go to it until it is back", server.url, error)
        server.routable = False
        server.trouble = f"unreachable ({type(error).__name__})"

    async def _reinstall(self, server: _Server, version: str) -> None:
        """The server lost `version` (it restarted unseen): load it again."""
        path = self._adapters.get(version)
        if path is None:
            raise VllmUnavailable(f"version {version} is not installed")
        log.warning("vLLM at %s lost version %s; loading it again", server.url, version)
        async with server.lock:
            server.installed.discard(version)
            await self._load(server, version, path)
            server.installed.add(version)

    async def _watch(self) -> None:
        """Each server's health, every `vllm_health_interval_s`: one that is down leaves the
        routing; back, it gets every version in service before it rejoins. An owned server that
        exited is started again."""
        while True:
            await asyncio.sleep(self.serving.vllm_health_interval_s)
            for server in self.servers:
                try:
                    await self._check(server)
                except Exception:
                    log.exception("checking vLLM server %s failed", server.url)

    async def _check(self, server: _Server) -> None:
        try:
            healthy = (await server.client.get("/health", timeout=5)).status_code == 200
        except httpx.TransportError as error:
            self._lost(server, error)
            healthy = False
        if not healthy:
            server.routable = False
            server.trouble = server.trouble or "not healthy"
            if self.owned is not None and self.owned.exited and not self._restarting:
                self._restarting = asyncio.create_task(self._restart_owned(), name="vllm-restart")
            return
        if server.routable:
            return
        async with server.lock:
            models = await self._models(server)
            base = [entry["id"] for entry in models if not entry.get("parent")]
            if base != [self._base]:
                server.trouble = f"serves {base}, not {self._base}"
                return
            listed = {entry["id"] for entry in models}
            loaded = set()
            for version, path in list(self._adapters.items()):
                try:
                    if version not in listed:
                        await self._load(server, version, path)
                    loaded.add(version)
                except ValueError:  # its files are gone: it cannot serve anywhere, nor block the rest
                    log.exception("vLLM at %s could not load version %s again", server.url, version)
            server.installed = loaded
        try:
            await self._probe(server)
        except VllmUnavailable as error:
            log.error("%s", error)
            server.trouble = str(error)
            return
        server.routable = True
        server.trouble = ""
        log.info("vLLM server %s is back with versions %s", server.url, sorted(server.installed) or "none")

    async def _restart_owned(self) -> None:
        assert self.owned is not None
        code = self.owned.process.returncode if self.owned.process else None
        log.error("the vLLM server exited (code %s); starting it again", code)
        try:
            await self.owned.start()
        except Exception as error:
            log.error("the vLLM server could not be started again: %s", error)
            for server in self.servers:
                server.trouble = str(error)
        finally:
            self._restarting = None

    async def _probe(self, server: _Server) -> None:
        """One token, asked to heal PROBE_HEALED at the serving temperature: a server that tempers
        its logits otherwise refuses it, and one whose first token does not spell the text has no
        healing processor (a server run elsewhere without Flywheel's flags, server_command). Either
        would record log-probs that are not the model's own: VllmUnavailable."""
        if not len(self.token_texts.allowed(PROBE_HEALED, may_end=False)):
            return
        body = {
            "model": self._base,
            "prompt": [self.eos_token_id],
            "max_tokens": 1,
            "temperature": 1.0,
            "return_token_ids": True,
            "vllm_xargs": {TEMPERATURE_ARG: self.model.temperature, HEALED_ARG: PROBE_HEALED},
        }
        for _ in range(3):
            response = await server.client.post("/v1/completions", json=body)
            if response.status_code != 200:
                raise VllmUnavailable(
                    f"the vLLM server at {server.url} cannot serve {self.model_name} as Flywheel records it: "
                    f"{_message(response)}"
                )
            first = response.json()["choices"][0]["token_ids"][0]
            if first == self.eos_token_id:
                continue  # ending at once is allowed: ask again
            text = self.token_texts.text(first)
            if text and (PROBE_HEALED.startswith(text) or text.startswith(PROBE_HEALED)):
                return
            raise VllmUnavailable(
                f"the vLLM server at {server.url} does not heal prompts: start it with Flywheel's flags "
                "(backend.vllm_server.server_command) and its plugin (vllm_plugin/) installed"
            )

    async def _models(self, server: _Server) -> list[dict[str, Any]]:
        response = await server.client.get("/v1/models", timeout=5)
        if response.status_code != 200:
            raise VllmUnavailable(f"vLLM at {server.url} answered /v1/models with {response.status_code}")
        return list(response.json()["data"])


def _raise_for(response: httpx.Response, server: _Server) -> None:
    message = _message(response)
    if response.status_code == 404 and "does not exist" in message:
        raise _VersionLost(message)
    if response.status_code in (502, 503, 504):
        raise httpx.TransportError(f"vLLM at {server.url} is unavailable: {message}")
    raise RuntimeError(f"vLLM at {server.url} answered {response.status_code}: {message}")


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


async def _gone(gone: Gone) -> bool:
    try:
        return await asyncio.wait_for(gone(), timeout=0.05)
    except Exception:
        return False
