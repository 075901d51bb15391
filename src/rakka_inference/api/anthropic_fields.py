"""Anthropic's wording of a bad field, and the :class:`~rakka_inference.api.fields.FieldReader`
that raises it: ``read``, shared by the Anthropic request modules.

Every message starts with the field's path, then says what is wrong in the API's own
(pydantic's) words: ``max_tokens: Field required``, ``temperature: Input should be a valid
number``, ``messages: List should have at least 1 item``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from rakka_inference.api.fields import Expected, FieldReader, JsonPath
from rakka_inference.core.errors import BadRequest

__all__ = ["AnthropicWording", "block_type", "invalid", "read", "unsupported"]

_EXPECTED: dict[Expected, str] = {
    "object": "dictionary",
    "array": "list",
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
}


def invalid(param: str, message: str) -> NoReturn:
    """Raise ``BadRequest("{param}: {message}")`` naming ``param``."""
    raise BadRequest(f"{param}: {message}", param=param)


def unsupported(param: str, what: str) -> NoReturn:
    """Raise "``{param}: {what} not supported by this gateway``"."""
    invalid(param, f"{what} not supported by this gateway")


class AnthropicWording:
    """The :class:`~rakka_inference.api.fields.Wording` of Anthropic's API."""

    __slots__ = ()

    def missing(self, param: str) -> BadRequest:
        return BadRequest(f"{param}: Field required", param=param)

    def wrong_type(self, param: str, expected: Expected, value: object) -> BadRequest:
        return BadRequest(f"{param}: Input should be a valid {_EXPECTED[expected]}", param=param)

    def empty_string(self, param: str) -> BadRequest:
        return BadRequest(f"{param}: String should have at least 1 character", param=param)

    def empty_array(self, param: str) -> BadRequest:
        return BadRequest(f"{param}: List should have at least 1 item", param=param)

    def out_of_range(self, param: str, low: float, high: float) -> BadRequest:
        return BadRequest(f"{param}: Input should be between {low:g} and {high:g}", param=param)

    def too_many_items(self, param: str, limit: int, length: int) -> BadRequest:
        return BadRequest(
            f"{param}: List should have at most {limit} items after validation, not {length}",
            param=param,
        )

    def integer_below(self, param: str, low: int, value: int) -> BadRequest:
        return BadRequest(f"{param}: Input should be greater than or equal to {low}", param=param)

    def integer_above(self, param: str, high: int, value: int) -> BadRequest:
        return BadRequest(f"{param}: Input should be less than or equal to {high}", param=param)

    def not_json(self) -> BadRequest:
        return BadRequest("There was an error parsing the body as JSON")

    def not_an_object(self, document: object) -> BadRequest:
        return BadRequest("body: Input should be a valid dictionary")

    def too_deep(self, path: JsonPath, limit: int) -> BadRequest:
        param = ".".join(str(step) for step in path)
        return BadRequest(
            f"{param}: arrays and objects should nest at most {limit} levels deep", param=param
        )


read = FieldReader(AnthropicWording())
"""The field reader of every Anthropic request."""


def block_type(block: Mapping[str, Any], param: str) -> str:
    """The ``type`` of the block (or other tagged object) at ``param``: a required string."""
    kind = read.string(block.get("type"), f"{param}.type")
    if kind is None:
        read.missing(f"{param}.type")
    return kind
