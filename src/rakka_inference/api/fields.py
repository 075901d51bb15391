"""Reading fields out of a request's JSON, shared by every client dialect, sans I/O.

A :class:`FieldReader` checks a JSON value's type (and, where asked, that it is present,
not empty, within a range) and raises :class:`~rakka_inference.core.errors.BadRequest`
whose ``param`` is the path of the field. What the error *says* is the dialect's: each API
words the same failure its own way ("Missing required parameter: 'model'." in OpenAI's,
"model: Field required" in Anthropic's), so the reader is built with a :class:`Wording`
that constructs the error, and the checks are written once.

The rules every dialect shares:

- ``null`` for an optional field means "absent" (the reader returns ``None``).
- A boolean is not a number: ``true`` is refused where an integer or a number is wanted.
- A required string is present, a string, and not empty, checked in that order.
- A range check refuses NaN (which compares false with every bound).
- A body nests arrays and objects at most :data:`MAX_JSON_DEPTH` levels deep, the body
  itself being the first. orjson parses far deeper documents, but what reads them after
  (the prompt-size estimate, a provider's serializer, schema handling) recurses, and would
  fail with a ``RecursionError`` on a hostile body; the reader refuses one up front, naming
  the path of the first value past the limit. (Past orjson's own limit, 1024 levels, the
  body does not parse at all, and is refused as not JSON.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NoReturn, Protocol, TypeAlias

import orjson

from rakka_inference.core.errors import BadRequest, PayloadTooLarge

__all__ = ["MAX_JSON_DEPTH", "Expected", "FieldReader", "JsonPath", "Wording", "is_http_url"]

MAX_JSON_DEPTH = 64
"""How deep a request body may nest arrays and objects; the body itself is level 1."""

JsonPath: TypeAlias = Sequence[str | int]
"""Where a value lies in a document: object keys and array indices, outermost first."""

Expected: TypeAlias = Literal["object", "array", "string", "integer", "number", "boolean"]
"""The JSON type a field should have, as JSON Schema names it."""


class Wording(Protocol):
    """How a dialect words each failure of a field: it builds the error, the reader raises it."""

    def missing(self, param: str) -> BadRequest:
        """A required field is absent (or ``null``)."""
        ...

    def wrong_type(self, param: str, expected: Expected, value: object) -> BadRequest:
        """``value`` is not of the ``expected`` JSON type."""
        ...

    def empty_string(self, param: str) -> BadRequest:
        """A required string is empty."""
        ...

    def empty_array(self, param: str) -> BadRequest:
        """An array that needs at least one item has none."""
        ...

    def out_of_range(self, param: str, low: float, high: float) -> BadRequest:
        """A number lies outside ``[low, high]``."""
        ...

    def not_json(self) -> BadRequest:
        """The body does not parse as JSON."""
        ...

    def not_an_object(self, document: object) -> BadRequest:
        """The body is JSON, but not an object."""
        ...

    def too_deep(self, path: JsonPath, limit: int) -> BadRequest:
        """The value at ``path`` nests arrays or objects past ``limit`` levels."""
        ...


class FieldReader:
    """The type checks of a request's fields, raising errors in one dialect's :class:`Wording`."""

    __slots__ = ("wording",)

    def __init__(self, wording: Wording) -> None:
        self.wording = wording

    def document(self, body: bytes, max_body_bytes: int | None = None) -> dict[str, Any]:
        """``body`` parsed as a JSON object; :class:`PayloadTooLarge` past ``max_body_bytes``."""
        if max_body_bytes is not None and len(body) > max_body_bytes:
            raise PayloadTooLarge(
                f"the request body is {len(body)} bytes; the limit is {max_body_bytes} bytes"
            )
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise self.wording.not_json() from None
        if not isinstance(document, dict):
            raise self.wording.not_an_object(document)
        path = _too_deep(document, MAX_JSON_DEPTH)
        if path is not None:
            raise self.wording.too_deep(path, MAX_JSON_DEPTH)
        return document

    def missing(self, param: str) -> NoReturn:
        """Raise the dialect's "field required" error for ``param``."""
        raise self.wording.missing(param)

    def wrong_type(self, param: str, expected: Expected, value: object) -> NoReturn:
        """Raise the dialect's type error for ``param``."""
        raise self.wording.wrong_type(param, expected, value)

    def mapping(self, value: object, param: str) -> dict[str, Any]:
        """``value``, which must be a JSON object."""
        if not isinstance(value, dict):
            self.wrong_type(param, "object", value)
        return value

    def array(self, value: object, param: str, *, non_empty: bool = False) -> list[Any]:
        """``value``, which must be a JSON array (with an item, if ``non_empty``)."""
        if not isinstance(value, list):
            self.wrong_type(param, "array", value)
        if non_empty and not value:
            raise self.wording.empty_array(param)
        return value

    def string(self, value: object, param: str) -> str | None:
        """``value``, which must be a string or ``null``."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.wrong_type(param, "string", value)
        return value

    def required_string(self, value: object, param: str) -> str:
        """``value``, which must be a non-empty string."""
        if value is None:
            self.missing(param)
        if not isinstance(value, str):
            self.wrong_type(param, "string", value)
        if not value:
            raise self.wording.empty_string(param)
        return value

    def integer(self, value: object, param: str) -> int | None:
        """``value``, which must be an integer or ``null``."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(param, "integer", value)
        return value

    def number(
        self, value: object, param: str, *, low: float | None = None, high: float | None = None
    ) -> float | None:
        """``value`` as a float, which must be a number (in ``[low, high]``) or ``null``."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(param, "number", value)
        # "not (low <= v <= high)" rejects NaN too, which compares false.
        if low is not None and high is not None and not low <= value <= high:
            raise self.wording.out_of_range(param, low, high)
        return float(value)

    def boolean(self, value: object, param: str) -> bool | None:
        """``value``, which must be a boolean or ``null``."""
        if value is None:
            return None
        if not isinstance(value, bool):
            self.wrong_type(param, "boolean", value)
        return value


_Container: TypeAlias = dict[str, Any] | list[Any]


def _too_deep(document: dict[str, Any], limit: int) -> JsonPath | None:
    """The path of the first array or object, in document order, deeper than ``limit``.

    Iterative, so that the check cannot exhaust the stack it guards. Every body is walked,
    so the walk counts levels only; the path is traced when the limit is passed.
    """
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


def _first_path_past(document: dict[str, Any], limit: int) -> JsonPath:
    """The path of the first container (in document order) at level ``limit + 1``."""
    pending: list[tuple[tuple[str | int, ...], _Container]] = [((), document)]
    while pending:
        path, value = pending.pop()
        if len(path) >= limit:  # the body, at path (), is level 1
            return path
        items = value.items() if isinstance(value, dict) else enumerate(value)
        children = [((*path, key), child) for key, child in items if isinstance(child, dict | list)]
        children.reverse()  # popped last-in first-out: keep document order
        pending.extend(children)
    raise AssertionError("no container lies past the limit")  # pragma: no cover


def is_http_url(url: str) -> bool:
    """Whether ``url`` is an ``http:`` or ``https:`` URL (the scheme in any case)."""
    return url.lower().startswith(("https://", "http://"))
