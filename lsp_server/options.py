"""The language server's options: `Settings` (flywheel.toml, FLYWHEEL_* env) give the defaults,
the client's `initializationOptions` and `workspace/didChangeConfiguration` override them. Each
default is written once, in core/config.py (`LspConfig`, `BackendConfig`); nothing here restates one.

Client keys (all optional): backendUrl, token, telemetry, userId, requestTimeoutS,
survivalDelaysS, rewriteWindowS, debounceMs, reportsShown, flushIntervalS, stateDir, evaluation, showRule,
languages ({languageId: true|false}, "*" for the rest), exclude (path globs, lsp_server/gate.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.config import BackendConfig, ConfigError, LspConfig, load_settings
from core.local_tokens import CLIENT

logger = logging.getLogger(__name__)

APP_NAME = "flywheel"

_DEFAULT = LspConfig()


@dataclass(frozen=True)
class Options:
    backend_url: str = BackendConfig().base_url
    token: str = ""
    telemetry: bool = _DEFAULT.telemetry
    # Configured user id; empty means the pseudonym kept in the state dir.
    user_id: str = _DEFAULT.user_id
    request_timeout_s: float = _DEFAULT.request_timeout_s
    survival_delays_s: tuple[float, ...] = tuple(_DEFAULT.survival_delays_s)
    # How long after a rejection or ignore what the user writes at its spot is collected.
    rewrite_window_s: float = _DEFAULT.rewrite_window_s
    # Wait this long before asking the backend; a newer request in the meantime replaces it.
    debounce_ms: float = _DEFAULT.debounce_ms
    # The client sends flywheel/didShowCompletion; otherwise returning an item counts as showing it.
    reports_shown: bool = False
    flush_interval_s: float = _DEFAULT.flush_interval_s
    # Only read at startup: where the outbox and the pseudonym live.
    state_dir: Path = Path(".")
    # Requests are part of an evaluation (flywheel simulate's held-out rounds): the backend scores
    # them but never trains on them (CompleteRequest.evaluation).
    evaluation: bool = False
    # Under an evaluation only: "floors" serves it under the version's confidence floors even where
    # it has a learned show policy (CompleteRequest.show_rule), for a side-by-side of the two.
    show_rule: Literal["version", "floors"] = "version"
    # The user's word per languageId (True: ask even if the model does not list it; False: never);
    # "*" for every language not named. Unnamed languages follow what the backend serves.
    languages: Mapping[str, bool] = field(default_factory=dict)
    # Path globs never sent to the backend, besides gate.DEFAULT_EXCLUDE.
    exclude: tuple[str, ...] = ()


# Client key → (field, parser). A value the parser rejects is ignored with a warning.
def _delays(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError("a list of seconds")
    return tuple(sorted(_non_negative(v) for v in value))


def _non_negative(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TypeError("a number >= 0")
    return float(value)


def _positive(value: Any) -> float:
    if _non_negative(value) == 0:
        raise TypeError("a number > 0")
    return float(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def _choices(value: Any) -> dict[str, bool]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, bool) for k, v in value.items()
    ):
        raise TypeError('an object of languageId: true|false ("*" for the rest)')
    return dict(value)


def _globs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise TypeError("a list of path globs")
    return tuple(value)


def _show_rule(value: Any) -> Literal["version", "floors"]:
    if value not in ("version", "floors"):
        raise TypeError('"version" or "floors"')
    return "floors" if value == "floors" else "version"


_CLIENT_KEYS = {
    "backendUrl": ("backend_url", lambda v: _string(v).rstrip("/")),
    "token": ("token", _string),
    "telemetry": ("telemetry", _flag),
    "userId": ("user_id", _string),
    "requestTimeoutS": ("request_timeout_s", _positive),
    "survivalDelaysS": ("survival_delays_s", _delays),
    "rewriteWindowS": ("rewrite_window_s", _non_negative),
    "debounceMs": ("debounce_ms", _non_negative),
    "reportsShown": ("reports_shown", _flag),
    "flushIntervalS": ("flush_interval_s", _positive),
    "stateDir": ("state_dir", lambda v: Path(_string(v)).expanduser()),
    "evaluation": ("evaluation", _flag),
    "showRule": ("show_rule", _show_rule),
    "languages": ("languages", _choices),
    "exclude": ("exclude", _globs),
}


def from_settings() -> Options:
    # The server runs in whatever repository the user opens: that repository's flywheel.toml may not
    # say where code and tokens go unless the user trusts it (core/config_file.py).
    settings = load_settings(trust_workspace=False)
    lsp = settings.lsp
    return Options(
        backend_url=settings.backend.base_url,
        token=settings.access_token(CLIENT),
        telemetry=lsp.telemetry,
        user_id=lsp.user_id,
        request_timeout_s=lsp.request_timeout_s,
        survival_delays_s=tuple(sorted(d for d in lsp.survival_delays_s if d >= 0)),
        rewrite_window_s=max(lsp.rewrite_window_s, 0.0),
        debounce_ms=max(lsp.debounce_ms, 0.0),
        flush_interval_s=lsp.flush_interval_s,
        state_dir=Path(lsp.state_dir).expanduser() if lsp.state_dir else default_state_dir(),
        languages=dict(lsp.languages),
        exclude=tuple(lsp.exclude),
    )


def load(client_options: Any) -> Options:
    """Settings overridden by what the client sent; a broken flywheel.toml or FLYWHEEL_* variable
    costs its values, not the language server."""
    try:
        base = from_settings()
    except ConfigError as error:
        logger.warning("%s; using the defaults", error)
        base = Options(state_dir=default_state_dir())
    except Exception:
        logger.exception("could not read the flywheel settings; using the defaults")
        base = Options(state_dir=default_state_dir())
    return with_client_options(base, client_options)


def default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME))


def client_section(raw: Any) -> Mapping[str, Any]:
    """Our keys from what a client sent: either at the top level or under "flywheel"."""
    if not isinstance(raw, Mapping):
        return {}
    nested = raw.get(APP_NAME)
    return nested if isinstance(nested, Mapping) else raw


def with_client_options(options: Options, raw: Any) -> Options:
    changes: dict[str, Any] = {}
    for key, value in client_section(raw).items():
        # None or "" leaves the setting to flywheel.toml (an editor's unset text field sends "").
        if key not in _CLIENT_KEYS or value is None or (value == "" and key != "userId"):
            continue
        name, parse = _CLIENT_KEYS[key]
        try:
            changes[name] = parse(value)
            if name == "exclude":  # the client's globs add to flywheel.toml's: exclusion only ever sends less
                changes[name] = tuple(dict.fromkeys(options.exclude + changes[name]))
        except (TypeError, ValueError) as exc:
            logger.warning("ignoring option %s=%r: expected %s", key, value, exc)
    return dataclasses.replace(options, **changes)


def pseudonym(state_dir: Path) -> str:
    """A random id for this person, made once and kept: learning is about the population, never
    about someone nameable."""
    path = state_dir / "user_id"
    try:
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
    except OSError:
        pass
    user_id = uuid.uuid4().hex
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        temporary.write_text(user_id + "\n", encoding="utf-8")
        try:
            # A hard link never replaces: when another editor window made the file first, its
            # id wins and both windows agree.
            os.link(temporary, path)
        except FileExistsError:
            user_id = path.read_text(encoding="utf-8").strip() or user_id
        except OSError:
            temporary.replace(path)  # no hard links on this file system
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not keep the pseudonymous user id in %s: %s", path, exc)
    return user_id
