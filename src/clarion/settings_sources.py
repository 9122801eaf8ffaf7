"""Where settings come from — a TOML file, ``CLARION_*`` variables, flags — and errors that say so.

Every value remembers its origin, so that a bad one is reported as the person wrote it::

    clarion.toml: unknown key limits.max_conections (did you mean limits.max_connections?)
    CLARION_PORT=abc: must be a valid integer
    --engine foo://x: must be "memory" or a Redis URL (redis://, rediss://, …)

In the environment, nested keys join with ``__`` and list settings take a JSON list or a
comma-separated one (``CLARION_ALLOWED_ORIGINS=https://a.example,https://b.example``); tables
take JSON. Every ``CLARION_*`` variable is a setting, except the ones the client commands read
(:data:`CLIENT_VARIABLES`): an unknown one is an error, never silently nothing.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import BaseModel, ValidationError

from clarion.errors import ConfigError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

PREFIX = "CLARION_"
NESTED = "__"
# Read by `clarion publish`, `subscribe` and `webhooks` (where the hub is, which token to use):
# not hub settings.
CLIENT_VARIABLES = frozenset({"CLARION_URL", "CLARION_TOKEN"})
DEFAULT_FILE = "clarion.toml"  # read from the working directory when no file is named
MAX_REPORTED = 5  # errors listed one per line; the rest are counted

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Origin:
    """Where a value was written: a ``file``, a ``variable``, a ``flag`` or ``code``."""

    kind: Literal["file", "variable", "flag", "code"]
    name: str  # the file's path, the variable's or flag's name, "Settings.load"
    text: str | None = None  # a variable's value as written


NOWHERE = Origin("code", "configuration")
LOAD = Origin("code", "Settings.load")  # overrides given in code
BUILT = Origin("code", "Settings")  # values given to Settings(...) itself


class Sourced:
    """Raw values merged from every source, each key path with the origin that set it."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origins: dict[KeyPath, Origin] = {}
        self.variables: list[str] = []  # the CLARION_* variables used

    def set(self, path: tuple[str, ...], value: Any, origin: Origin) -> None:
        node = self.values
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        old = node.get(path[-1])
        node[path[-1]] = _merge(old, value) if isinstance(old, dict) else value
        self.origins[path] = origin

    def origin_of(self, loc: KeyPath) -> tuple[Origin, KeyPath]:
        """The origin of the value at ``loc``, and the path it was set at."""
        for n in range(len(loc), 0, -1):
            origin = self.origins.get(loc[:n])
            if origin is not None:
                return origin, loc[:n]
        for path, origin in self.origins.items():  # set below loc: CLARION_PORT__X
            if path[: len(loc)] == loc and path != ():
                return origin, path
        return self.origins.get((), NOWHERE), ()


def _merge(base: dict[str, Any], top: Any) -> Any:
    if not isinstance(top, dict):
        return top
    merged = dict(base)
    for key, value in top.items():
        old = merged.get(key)
        merged[key] = _merge(old, value) if isinstance(old, dict) else value
    return merged


# ---- the file -----------------------------------------------------------------------------


def read_file(path: str | os.PathLike[str], into: Sourced) -> None:
    """Add the TOML file at ``path`` to ``into``; a missing or malformed file is a ConfigError."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {name}") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {_toml_reason(str(exc))}") from None
    # The file comes first, so it is the origin of whatever no later source sets.
    into.values = _merge(into.values, data)
    into.origins[()] = Origin("file", name)


def _toml_reason(text: str) -> str:
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", text)
    if found is None:
        return text
    reason, line, column = found.groups()
    return f"line {line}, column {column}: {reason[0].lower()}{reason[1:]}"


# ---- the environment ----------------------------------------------------------------------


def read_environment(model: type[BaseModel], environ: Mapping[str, str], into: Sourced) -> None:
    """Add every ``CLARION_*`` variable of ``environ`` (but the client ones) to ``into``."""
    for name in sorted(environ):
        if not name.upper().startswith(PREFIX) or name.upper() in CLIENT_VARIABLES:
            continue
        raw = environ[name]
        path = tuple(part.lower() for part in name[len(PREFIX) :].split(NESTED))
        if not all(path):
            raise ConfigError(f"{name}: not a setting name (empty part between '{NESTED}')")
        value = _parse_variable(name, raw, annotation_at(model, path))
        into.set(path, value, Origin("variable", name, raw))
        into.variables.append(name)


def _parse_variable(name: str, raw: str, annotation: Any) -> Any:
    text = raw.strip()
    if _takes_json(annotation) and text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: not valid JSON: {exc}") from None
    if typing.get_origin(annotation) is list:
        # A list setting also takes the plain form people write first: a,b,c.
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _takes_json(annotation: Any) -> bool:
    if annotation is None:
        return False
    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_takes_json(arg) for arg in typing.get_args(annotation))
    return origin in (list, dict)


def annotation_at(model: type[BaseModel], path: KeyPath) -> Any:
    """The type of the setting at ``path`` in ``model``; None when there is no such setting."""
    annotation: Any = model
    for key in path:
        annotation = _step(annotation, key)
        if annotation is None:
            return None
    return annotation


def _step(annotation: Any, key: str | int) -> Any:
    """The type of ``key`` within a value of type ``annotation``; None when it has no such key."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(key))
        return None if field is None else field.annotation
    if typing.get_origin(annotation) in (dict, list):
        return typing.get_args(annotation)[-1]
    return None


def _choices(annotation: Any) -> tuple[Any, ...]:
    """The members of a union that are not None: pydantic validates each of them apart."""
    if typing.get_origin(annotation) not in (Union, types.UnionType):
        return ()
    return tuple(arg for arg in typing.get_args(annotation) if arg is not type(None))


# ---- validation errors ----------------------------------------------------------------------


def explain(error: ValidationError, model: type[BaseModel], sourced: Sourced) -> ConfigError:
    """One plain line per problem, naming the file, variable or flag, the key and what is wanted."""
    lines = [_line(detail, model, sourced) for detail in _reworded(error.errors(), model)]
    if len(lines) > MAX_REPORTED:
        lines = [*lines[:MAX_REPORTED], f"… and {len(lines) - MAX_REPORTED} more"]
    return ConfigError("\n".join(lines))


def _reworded(errors: list[ErrorDetails], model: type[BaseModel]) -> list[ErrorDetails]:
    """pydantic's errors as problems of the settings written, in the words of the TOML file.

    pydantic tries each member of a union and reports every failure, under a key of its own
    making (``join_leave.bool``, ``join_leave.literal['user','client']``). A value of no member's
    type is one problem, what the setting accepts; a value of a member's type that breaks that
    member's rule (an item of a list, a bound) is that member's problem alone.
    """
    out: list[ErrorDetails | KeyPath] = []
    unions: dict[KeyPath, tuple[Any, list[ErrorDetails]]] = {}
    for detail in errors:
        found = _union_in(model, tuple(detail["loc"]))
        if found is None:
            out.append(detail)
            continue
        at, union = found
        if at not in unions:
            unions[at] = (union, [])
            out.append(at)
        unions[at][1].append(detail)
    result: list[ErrorDetails] = []
    for item in out:
        if not isinstance(item, tuple):
            annotation = annotation_at(model, tuple(item["loc"]))
            choices = _choices(annotation) or (annotation,)
            if item["type"] == "literal_error" and typing.get_origin(choices[0]) is Literal:
                item = _choice_error(item, annotation)
            result.append(item)
            continue
        union, branches = unions[item]
        inner = len(item) + 1  # the member's key, then the value's within it
        kept = [d for d in branches if len(d["loc"]) > inner or not _mismatch(d["type"])]
        for detail in kept:
            loc = tuple(detail["loc"])
            result.append({**detail, "loc": (*loc[: inner - 1], *loc[inner:])})
        if not kept:
            result.append(_choice_error({**branches[0], "loc": item}, union))
    return result


def _choice_error(detail: ErrorDetails, annotation: Any) -> ErrorDetails:
    """A value outside a union or a set of literals: what the setting accepts, as TOML spells it."""
    return {**detail, "type": "value_error", "msg": "must be " + _or(_accepted(annotation))}


def _union_in(model: type[BaseModel], loc: KeyPath) -> tuple[KeyPath, Any] | None:
    """The key in ``loc`` whose setting is a union, and its type; None when there is none."""
    annotation: Any = model
    for n, key in enumerate(loc):
        choices = _choices(annotation)
        if len(choices) > 1:
            return loc[:n], annotation
        if choices:  # X | None: the value is X's
            annotation = choices[0]
        annotation = _step(annotation, key)
        if annotation is None:
            return None
    return None


def _mismatch(kind: str) -> bool:
    """Whether an error says the value is not of the member's type at all."""
    return kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "enum")


def _accepted(annotation: Any) -> list[str]:
    words: list[str] = []
    for choice in _choices(annotation) or (annotation,):
        if choice is bool:
            words += ["true", "false"]
        elif typing.get_origin(choice) is Literal:
            words += [json.dumps(value) for value in typing.get_args(choice)]
        elif typing.get_origin(choice) is list:
            words.append(f"a list of {_noun(typing.get_args(choice)[0])}s")
        else:
            words.append(f"a {_noun(choice)}")
    return words


def _noun(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "table"}
    return names.get(annotation, names.get(typing.get_origin(annotation), str(annotation)))


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"']*@")
# Keys whose values are credentials: an error names them, and never shows what they hold.
SECRET_KEYS = frozenset({"api_key", "token_secret", "secret"})


def _line(detail: ErrorDetails, model: type[BaseModel], sourced: Sourced) -> str:
    loc = tuple(detail["loc"])
    origin, at = sourced.origin_of(loc)
    key = _dotted(loc)
    if detail["type"] == "extra_forbidden":
        hint = _suggestion(model, loc)
        if origin.kind == "variable" and at == loc:
            better = f" (did you mean {_variable(hint)}?)" if hint else ""
            return f"{origin.name}: unknown setting{better}"
        better = f" (did you mean {_dotted(hint)}?)" if hint else ""
        return f"{origin.name}: unknown key {key}{better}"
    reason = _reason(detail)
    if detail["type"] != "missing" and any(p in SECRET_KEYS for p in loc if isinstance(p, str)):
        shown = f"{origin.name}: {key}" if origin.kind == "file" else origin.name
        return f"{shown} (value not shown): {reason}"
    value = detail.get("input")
    if detail["type"] == "missing" or (at != loc and origin.kind != "file"):
        where = f"{origin.name}: {key}"
    elif origin.kind == "variable":
        where = f"{origin.name}={origin.text}"
    elif origin.kind == "flag":
        where = f"{origin.name} {_text(value)}"
    elif origin in (LOAD, BUILT):
        where = f"{origin.name}({key}={value!r})"
    elif loc:
        where = f"{origin.name}: {key} = {json.dumps(value, default=str)}"
    else:
        where = origin.name
    # A URL's user and password (a Redis engine's) are a credential too.
    return _USERINFO.sub(r"\1***@", f"{where}: {reason}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _reason(detail: ErrorDetails) -> str:
    kind, message = detail["type"], detail["msg"]
    if kind == "missing":
        return "required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a table"
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
        if kind.endswith(("_parsing", "_type")):
            message = message.split(",")[0]  # "a valid integer", without pydantic's detail
    return message


def _dotted(path: KeyPath) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def _variable(path: KeyPath) -> str:
    return PREFIX + NESTED.join(str(k).upper() for k in path)


def _suggestion(model: type[BaseModel], loc: KeyPath) -> KeyPath | None:
    parent = annotation_at(model, loc[:-1])
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return None
    name = str(loc[-1])
    # A setting named by its last words (``origins``, ``secret``) is the one that ends so, when
    # one does; else the nearest spelling.
    close = [field for field in parent.model_fields if field.endswith("_" + name)]
    if len(close) != 1:
        close = difflib.get_close_matches(name, list(parent.model_fields), n=1, cutoff=0.7)
    return (*loc[:-1], close[0]) if close else None


# ---- all together ---------------------------------------------------------------------------

M = typing.TypeVar("M", bound=BaseModel)


def load(
    model: type[M],
    config_file: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    flags: bool = False,
) -> tuple[M, Sourced]:
    """``model`` from ``config_file``, the environment and ``overrides`` (in rising priority).

    With ``flags`` the overrides are reported as the command-line flags they came from.
    """
    sourced = Sourced()
    if config_file is not None:
        read_file(config_file, sourced)
    read_environment(model, os.environ if environ is None else environ, sourced)
    for name, value in overrides.items():
        origin = Origin("flag", "--" + name.replace("_", "-")) if flags else LOAD
        sourced.set((name,), value, origin)
    try:
        return model.model_validate(sourced.values), sourced
    except ValidationError as exc:
        raise explain(exc, model, sourced) from None


def default_file(directory: str | os.PathLike[str] = ".") -> Path | None:
    """``clarion.toml`` in ``directory`` when there is one: read when no file is named."""
    path = Path(directory) / DEFAULT_FILE
    return path if path.is_file() else None
