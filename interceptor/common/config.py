"""Configuration: one dataclass per process, filled from file, env and flags.

Precedence (later wins): defaults < TOML file < environment < command line.
A field ``signing_key`` of the node config is read from the file key
``signing_key``, the variable ``INTERCEPTOR_NODE_SIGNING_KEY`` and the flag
``--signing-key``. Every problem becomes a ConfigError with one line that
names the option, which the CLI prints before exiting with status 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from interceptor.common.errors import ConfigError

T = TypeVar("T")


def _base_type(hint: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as ``int | None``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base, _ = _base_type(args[0])
        return base, True
    if origin is not None:
        return origin, False
    return hint, False


def _coerce(name: str, hint: Any, value: Any) -> Any:
    base, optional = _base_type(hint)
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ConfigError(f"config: {name} must be set")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value, 0) if isinstance(value, str) else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is str:
            if not isinstance(value, str | int | float):
                raise ValueError(value)
            return str(value)
        if base is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list):
                return [str(v) for v in value]
            raise ValueError(value)
        if base is dict:
            if isinstance(value, dict):
                return dict(value)
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config: {name} must be {base.__name__}, got {value!r:.60}") from None
    return value


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """One flag per field (values stay strings until ``load``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag") is False:
            continue
        base, _ = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if base is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None,
                                metavar=f.name.upper(), help=help_text)


def load(cls: type[T], *, section: str, path: str | None,
         flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None,
         fallback: Mapping[str, Any] | None = None) -> T:
    """Build ``cls`` from defaults, the TOML file at ``path``, env and flags.

    ``fallback`` values sit below the file: they fill required options for
    commands that do not need them (e.g. ``node --cleanup``).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = dict(fallback or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
        data = data.get(section, data) if isinstance(data.get(section), dict) else data
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"config: {path}: unknown option {key!r}")
            values[key] = value
    prefix = f"INTERCEPTOR_{section.upper()}_"
    for key in known:
        env_value = env.get(prefix + key.upper())
        if env_value is not None:
            values[key] = env_value
    for key, value in (flags or {}).items():
        if key in known and value is not None:
            values[key] = value
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            kwargs[f.name] = _coerce(f.name, hints[f.name], values[f.name])
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        missing = str(exc).split("argument")[-1].strip(": ")
        raise ConfigError(f"config: missing required option {missing}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def opt(default: T, help_text: str) -> T:
    """A config field with a default and the help text its flag shows."""
    if isinstance(default, list | dict):
        frozen = default
        return cast(T, dataclasses.field(default_factory=lambda: copy.deepcopy(frozen),
                                         metadata={"help": help_text}))
    return dataclasses.field(default=default, metadata={"help": help_text})


def required(help_text: str) -> Any:
    """A config field without a default."""
    return dataclasses.field(metadata={"help": help_text})
