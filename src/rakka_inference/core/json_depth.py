"""How deep a client's JSON may nest, and the walk that finds a value past the limit.

A request body is parsed by orjson, which refuses documents past 1024 levels; but what
reads the parsed value afterwards recurses — the prompt-size estimate (``json.dumps``),
a provider's request serializer (orjson writes at most 254 levels), schema handling — and
would fail with a ``RecursionError`` or an encoder error on a hostile value far earlier.
So the gateway refuses, up front, any client JSON that nests arrays and objects deeper
than :data:`MAX_JSON_DEPTH`: the body itself, and JSON a client sends inside a string
that is parsed later (a tool call's ``arguments``). 64 levels is far more than any real
tool schema or structured output uses, and leaves the translated request (a few levels
of wrapping per provider) far under every serializer's own limit.

:func:`too_deep` walks iteratively, so the check cannot exhaust the stack it guards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

__all__ = ["MAX_JSON_DEPTH", "JsonPath", "too_deep"]

MAX_JSON_DEPTH = 64
"""How deep client JSON may nest arrays and objects; the outermost value is level 1."""

JsonPath: TypeAlias = Sequence[str | int]
"""Where a value lies in a document: object keys and array indices, outermost first."""

_Container: TypeAlias = dict[str, Any] | list[Any]


def too_deep(document: object, limit: int = MAX_JSON_DEPTH) -> JsonPath | None:
    """The path of the first array or object, in document order, nested deeper than
    ``limit`` levels in ``document`` (an array or object is level 1); None when none is.

    Every value is walked, so the walk counts levels only; the path is traced once the
    limit is known to be passed.
    """
    if not isinstance(document, dict | list):
        return None
    pending: list[tuple[_Container, int]] = [(document, 1)]
    pop, push = pending.pop, pending.append
    while pending:
        value, depth = pop()
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return _first_path_past(document, limit)
                push((child, depth + 1))
    return None


def _first_path_past(document: _Container, limit: int) -> JsonPath:
    """The path of the first container (in document order) at level ``limit + 1``."""
    pending: list[tuple[tuple[str | int, ...], _Container]] = [((), document)]
    while pending:
        path, value = pending.pop()
        if len(path) >= limit:  # the document, at path (), is level 1
            return path
        items = value.items() if isinstance(value, dict) else enumerate(value)
        children = [((*path, key), child) for key, child in items if isinstance(child, dict | list)]
        children.reverse()  # popped last-in first-out: keep document order
        pending.extend(children)
    raise AssertionError("no container lies past the limit")  # pragma: no cover
