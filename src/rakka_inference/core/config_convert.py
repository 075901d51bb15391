"""A generic converter from TOML values to the typed records of :mod:`.deployment`.

:class:`Converter` is driven by a record's ``dataclasses.fields`` and ``typing`` hints, so a
field added to a record is configurable with no change here. It knows ``bool``, ``int``
(never a bool), ``float`` (an int is accepted), ``str``, enums and ``Literal`` (the error
lists the allowed values), ``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]``, nested
records (over the field's default, so a partial ``[retry]`` table keeps the other
defaults) and :class:`~.secrets.SecretRef`:

- ``{ from_env = "NAME" }`` and ``{ from_file = "PATH" }`` (relative to the configuration's
  directory) are references, resolved when used;
- a plain string is an inline secret: accepted, with an :class:`InlineSecretWarning`
  pointing at the file and line.

A rejected value is recorded in :class:`Issues` (with its field path and line) and comes
back as :data:`INVALID`; conversion goes on, so one pass finds every issue.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import warnings
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Union, get_args, get_origin, get_type_hints

from rakka_inference.core.config_lines import FieldPath, LineLocator, format_path
from rakka_inference.core.config_rules import record_issues, rule_for, suggest
from rakka_inference.core.errors import ConfigIssue
from rakka_inference.core.secrets import InlineSecretWarning, SecretRef

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["INVALID", "Converter", "Issues", "describe_kind", "init_fields"]


class Issues:
    """Collects issues, each placed on its line."""

    def __init__(self, source: str, locator: LineLocator) -> None:
        self.source = source
        self._locator = locator
        self._issues: list[ConfigIssue] = []

    @property
    def found(self) -> bool:
        return bool(self._issues)

    def line_of(self, path: FieldPath) -> int | None:
        return self._locator.line_of(path)

    def add(self, path: FieldPath, message: str) -> None:
        line = self._locator.line_of(path)
        self._issues.append(ConfigIssue(self.source, format_path(path), message, line))

    def sorted(self) -> list[ConfigIssue]:
        return sorted(
            self._issues, key=lambda issue: math.inf if issue.line is None else issue.line
        )


def describe_kind(value: object) -> str:
    """What a TOML value is, in words (never the value: it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


INVALID: Final = object()
"""Returned by the converter for a value it rejected (the issue is already recorded)."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def init_fields(cls: type[DataclassInstance]) -> dict[str, dataclasses.Field[Any]]:
    """The fields a configuration may set, by name."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


def _default(field: dataclasses.Field[Any]) -> object:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return INVALID


class Converter:
    """Turns TOML values into typed values, driven by dataclass fields and type hints."""

    def __init__(self, issues: Issues, base_dir: Path) -> None:
        self._issues = issues
        self._base_dir = base_dir

    def record(
        self,
        cls: type[DataclassInstance],
        raw: object,
        path: FieldPath,
        *,
        base: Any = None,
        context: str = "",
    ) -> Any:
        """Build ``cls`` from a table, over ``base`` (a default instance) when given."""
        values = self.fields(cls, raw, path, context=context)
        if values is None:
            return INVALID
        record = dataclasses.replace(base, **values) if isinstance(base, cls) else cls(**values)
        for name, message in record_issues(record):
            self._issues.add(path if name is None else (*path, name), message)
        return record

    def fields(
        self,
        cls: type[DataclassInstance],
        raw: object,
        path: FieldPath,
        *,
        skip: frozenset[str] = frozenset(),
        partial: dict[str, Any] | None = None,
        context: str = "",
    ) -> dict[str, Any] | None:
        """The converted fields of a table, or ``None`` when any was rejected.

        Keys in ``skip`` are left to the caller. ``partial``, when given, receives every
        field that converted, even when others did not. ``context`` ends the message of an
        unknown key (`` for runtime 'anthropic'``).
        """
        if not isinstance(raw, dict):
            self._issues.add(path, f"expected a table, got {describe_kind(raw)}")
            return None
        known = init_fields(cls)
        values: dict[str, Any] = {} if partial is None else partial
        ok = True
        for key, item in raw.items():
            if key in skip:
                continue
            field = known.get(key)
            if field is None:
                self._issues.add((*path, key), f"unknown key {key!r}{context}{suggest(key, known)}")
                ok = False
                continue
            value = self.value(_hints(cls)[key], item, (*path, key), _default(field))
            rule = rule_for(cls, key)
            problem = None if value is INVALID or rule is None else rule(value)
            if problem is not None:
                self._issues.add((*path, key), problem)
            if value is INVALID or problem is not None:
                ok = False
                continue
            values[key] = value
        for name, field in known.items():
            if name not in raw and name not in skip and _default(field) is INVALID:
                self._issues.add((*path, name), "is required")
                ok = False
        return values if ok else None

    def value(self, hint: Any, raw: object, path: FieldPath, default: object = INVALID) -> Any:
        origin = get_origin(hint)
        if origin in (Union, types.UnionType):
            (inner,) = (arg for arg in get_args(hint) if arg is not type(None))
            return self.value(inner, raw, path)  # TOML has no null: the value is present
        if origin is Literal:
            return self._choice(raw, path, get_args(hint), lambda value: value)
        if origin is tuple:
            return self._array(get_args(hint)[0], raw, path)
        if origin is Mapping:
            return self._mapping(get_args(hint)[1], raw, path)
        if hint is SecretRef:
            return self.secret(raw, path)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self.record(hint, raw, path, base=default)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self._choice(raw, path, tuple(member.value for member in hint), hint)
        return self._scalar(hint, raw, path)

    def _scalar(self, hint: type, raw: object, path: FieldPath) -> Any:
        expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
        if hint not in expected:
            raise TypeError(f"the configuration loader cannot convert {hint!r}")
        is_bool = isinstance(raw, bool)
        if hint is float and isinstance(raw, int | float) and not is_bool:
            if math.isfinite(raw):
                return float(raw)
            self._issues.add(path, "must be a finite number")
            return INVALID
        if isinstance(raw, hint) and (hint is bool or not is_bool):
            return raw  # bool is an int to Python, never to a configuration
        self._issues.add(path, f"expected {expected[hint]}, got {describe_kind(raw)}")
        return INVALID

    def _choice(
        self, raw: object, path: FieldPath, allowed: tuple[Any, ...], build: Callable[[Any], Any]
    ) -> Any:
        listed = ", ".join(repr(value) for value in allowed)
        if not isinstance(raw, str):
            self._issues.add(path, f"expected one of {listed}, got {describe_kind(raw)}")
        elif raw not in allowed:
            hint = suggest(raw, allowed)
            self._issues.add(path, f"{raw!r} is not one of {listed}{hint}")
        else:
            return build(raw)
        return INVALID

    def _array(self, item_hint: Any, raw: object, path: FieldPath) -> Any:
        if not isinstance(raw, list):
            self._issues.add(path, f"expected an array, got {describe_kind(raw)}")
            return INVALID
        items = [self.value(item_hint, item, (*path, i)) for i, item in enumerate(raw)]
        return INVALID if any(item is INVALID for item in items) else tuple(items)

    def _mapping(self, value_hint: Any, raw: object, path: FieldPath) -> Any:
        if not isinstance(raw, dict):
            self._issues.add(path, f"expected a table, got {describe_kind(raw)}")
            return INVALID
        items = {key: self.value(value_hint, item, (*path, key)) for key, item in raw.items()}
        return INVALID if any(item is INVALID for item in items.values()) else items

    def secret(self, raw: object, path: FieldPath) -> Any:
        """``{ from_env = "NAME" }``, ``{ from_file = "PATH" }``, or an inline string."""
        shapes = '{ from_env = "NAME" }, { from_file = "PATH" } or an inline string'
        if isinstance(raw, str) and raw:
            line = self._issues.line_of(path)
            warnings.warn_explicit(
                f"{format_path(path)}: a secret is given inline; "
                "prefer { from_env = ... } or { from_file = ... }",
                InlineSecretWarning,
                filename=self._issues.source,
                lineno=line or 0,
            )
            return SecretRef.inline(raw, warn=False)
        if isinstance(raw, dict) and len(raw) == 1:
            ((key, location),) = raw.items()
            if key in ("from_env", "from_file") and isinstance(location, str) and location:
                if key == "from_env":
                    return SecretRef.from_env(location)
                return SecretRef.from_file(self._base_dir / Path(location).expanduser())
            if key not in ("from_env", "from_file"):
                sources = ("from_env", "from_file")
                hint = suggest(f"from_{key}", sources) or suggest(key, sources)
                self._issues.add(path, f"unknown secret source {key!r}{hint}")
                return INVALID
            self._issues.add((*path, key), "expected a non-empty string")
            return INVALID
        got = "an empty string" if raw == "" else describe_kind(raw)
        if isinstance(raw, dict):
            got = f"a table with keys {', '.join(map(repr, raw)) or '(none)'}"
        self._issues.add(path, f"expected a secret reference: {shapes}; got {got}")
        return INVALID
