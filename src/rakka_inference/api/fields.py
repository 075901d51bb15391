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
- An integer read with bounds (``integer(value, param, low=, high=)``) is refused outside
  them, naming the bound: every count a client sends (``max_tokens``, ``n``, ``seed``...)
  has one (:mod:`rakka_inference.core.messages`).
- A body nests arrays and objects at most :data:`MAX_JSON_DEPTH` levels deep, the body
  itself being the first (:mod:`rakka_inference.core.json_depth` says why); the reader
  refuses a deeper one up front, naming the path of the first value past the limit. (Past
  orjson's own limit, 1024 levels, the body does not parse at all, and is refused as not
  JSON.) So is JSON text held in a string, such as a tool call's ``arguments``
  (:meth:`FieldReader.json_text`), the string being named.
"""

from __future__ import annotations

from typing import Any, Literal, NoReturn, Protocol, TypeAlias

import orjson

from rakka_inference.core.errors import BadRequest, PayloadTooLarge
from rakka_inference.core.json_depth import MAX_JSON_DEPTH, JsonPath, too_deep

__all__ = ["MAX_JSON_DEPTH", "Expected", "FieldReader", "JsonPath", "Wording", "is_http_url"]

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

    def too_many_items(self, param: str, limit: int, length: int) -> BadRequest:
        """An array holds ``length`` items, more than its ``limit``."""
        ...

    def integer_below(self, param: str, low: int, value: int) -> BadRequest:
        """An integer is below its least value ``low``."""
        ...

    def integer_above(self, param: str, high: int, value: int) -> BadRequest:
        """An integer is above its greatest value ``high``."""
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
        path = too_deep(document, MAX_JSON_DEPTH)
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

    def array(
        self, value: object, param: str, *, non_empty: bool = False, max_items: int | None = None
    ) -> list[Any]:
        """``value``, which must be a JSON array (with an item, if ``non_empty``; at most
        ``max_items``, if given)."""
        if not isinstance(value, list):
            self.wrong_type(param, "array", value)
        if non_empty and not value:
            raise self.wording.empty_array(param)
        if max_items is not None and len(value) > max_items:
            raise self.wording.too_many_items(param, max_items, len(value))
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

    def integer(
        self, value: object, param: str, *, low: int | None = None, high: int | None = None
    ) -> int | None:
        """``value``, which must be an integer (at least ``low``, at most ``high``) or
        ``null``."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(param, "integer", value)
        if low is not None and value < low:
            raise self.wording.integer_below(param, low, value)
        if high is not None and value > high:
            raise self.wording.integer_above(param, high, value)
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

    def json_text(self, value: str, param: str) -> str:
        """``value``, JSON text held in a string (a tool call's ``arguments``), refused when
        it is JSON nested deeper than :data:`MAX_JSON_DEPTH` levels: a provider that takes
        it structured parses it and writes it into its own request. Text that is not JSON
        is left as it is, for the provider that parses it to refuse, or to pass on."""
        if "{" not in value and "[" not in value:
            return value  # no nesting at all: nothing to parse
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if too_deep(parsed, MAX_JSON_DEPTH) is not None:
            raise self.wording.too_deep((param,), MAX_JSON_DEPTH)
        return value

    def boolean(self, value: object, param: str) -> bool | None:
        """``value``, which must be a boolean or ``null``."""
        if value is None:
            return None
        if not isinstance(value, bool):
            self.wrong_type(param, "boolean", value)
        return value


def is_http_url(url: str) -> bool:
    """Whether ``url`` is an ``http:`` or ``https:`` URL (the scheme in any case)."""
    return url.lower().startswith(("https://", "http://"))
