"""Reading `flywheel.toml`: which file applies, which keys a repository's own file may set, and
one line naming the key when a key or a value is wrong.

The file applies from `$FLYWHEEL_CONFIG`, `./flywheel.toml`, then the user's
`~/.config/flywheel/flywheel.toml` (the first that exists). A `./flywheel.toml` is the workspace's:
the language server runs in whatever repository the user opens, so a file there could send the
code the server reads, and the user's token, anywhere. The language server therefore takes the
keys that say where code, tokens and state go (`ROUTED_KEYS`) from a workspace file only when the
user trusts it: its path is listed in `trusted_configs` in the user's own file. Otherwise those keys
come from the user's file (or the defaults) and the server logs one warning.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

if TYPE_CHECKING:
    # Not at run time: the command line imports ConfigError, and `flywheel lsp` answers the
    # editor's `initialize` before it reads any settings.
    from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

APP_NAME = "flywheel"
FILE_NAME = "flywheel.toml"
TRUST_KEY = "trusted_configs"
# Where code and tokens are sent (the URL is built from host and port when `url` is empty), where
# the outbox keeps events (code included), who the user is, and whether anything is sent at all.
ROUTED_KEYS: tuple[tuple[str, ...], ...] = (
    ("backend", "url"),
    ("backend", "token"),
    ("backend", "host"),
    ("backend", "port"),
    ("data_dir",),
    ("lsp", "state_dir"),
    ("lsp", "telemetry"),
    ("lsp", "user_id"),
    # Which files' code is sent: a language turned on, or the user's exclusions dropped.
    ("lsp", "languages"),
    ("lsp", "exclude"),
)


class ConfigError(ValueError):
    """A configuration that cannot be used; its message is one line naming the key and the file."""


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    # Found in the working directory rather than named by the user ($FLYWHEEL_CONFIG) or theirs.
    workspace: bool


def user_file() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / FILE_NAME


def find() -> ConfigFile | None:
    named = os.environ.get("FLYWHEEL_CONFIG")
    if named and Path(named).is_file():
        return ConfigFile(Path(named), workspace=False)
    local = Path(FILE_NAME)
    if local.is_file():
        return ConfigFile(local, workspace=not _same_file(local, user_file()))
    if user_file().is_file():
        return ConfigFile(user_file(), workspace=False)
    return None


def read(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    """The file's table, every key checked against `model`'s fields."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror}") from None
    check_keys(data, model, path)
    return data


def check_keys(data: dict[str, Any], model: type[BaseModel], path: Path, prefix: str = "") -> None:
    """Refuses the first key `model` has no field for, with the nearest known key as a suggestion:
    a misspelt key silently left at its default is a setting that never applied."""
    from pydantic import BaseModel

    fields = model.model_fields
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else "known: " + ", ".join(sorted(fields))
            raise ConfigError(f"{path}: unknown key {name} ({hint})")
        annotation = fields[key].annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            check_keys(value, annotation, path, f"{name}.")


def trusted(path: Path) -> bool:
    """Whether the user's own file lists `path` in `trusted_configs`."""
    own = user_file()
    if not own.is_file():
        return False
    try:
        with own.open("rb") as file:
            listed = tomllib.load(file).get(TRUST_KEY, [])
    except (OSError, tomllib.TOMLDecodeError):
        return False
    if not isinstance(listed, list):
        return False
    return any(isinstance(entry, str) and _same_file(Path(entry).expanduser(), path) for entry in listed)


def routed_only(data: dict[str, Any]) -> dict[str, Any]:
    """The routed keys of `data` (a table read from a file), nested as they were."""
    kept: dict[str, Any] = {}
    for key in ROUTED_KEYS:
        value = _get(data, key)
        if value is not _MISSING:
            _set(kept, key, value)
    return kept


def without_routed(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """`data` less its routed keys; a warning names those dropped and how to trust the file."""
    kept = copy.deepcopy(data)
    dropped = []
    for key in ROUTED_KEYS:
        parent = _get(kept, key[:-1]) if len(key) > 1 else kept
        if isinstance(parent, dict) and key[-1] in parent:
            del parent[key[-1]]
            dropped.append(".".join(key))
    if dropped:
        logger.warning(
            "%s: ignoring %s: a flywheel.toml in the working directory may not say where code and tokens go"
            " unless you trust it (add its path to %s in %s)",
            path.resolve(),
            ", ".join(dropped),
            TRUST_KEY,
            user_file(),
        )
    return kept


def describe(error: ValidationError, path: Path | None) -> str:
    """One line for the first wrong value: where it came from, its key, what was expected, what was given."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc)
    variable = "FLYWHEEL_" + "__".join(loc).upper()
    if any(name.upper() == variable for name in os.environ):
        source = variable
    else:
        source = str(path) if path is not None else "settings"
    given = json.dumps(first.get("input"), default=str)
    return f"{source}: {key}: {_expected(first['type'], first['msg'])}, got {given}"


_EXPECTED = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
}


def _expected(kind: str, message: str) -> str:
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    return "expected " + message.removeprefix("Input should be ").removeprefix("Value error, ")


_MISSING = object()


def _get(data: dict[str, Any], key: tuple[str, ...]) -> Any:
    node: Any = data
    for part in key:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(data: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    for part in key[:-1]:
        data = data.setdefault(part, {})
    data[key[-1]] = value


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
