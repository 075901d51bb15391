"""OpenAI's wording of a bad field, and the :class:`~rakka_inference.api.fields.FieldReader`
that raises it: ``read``, shared by the OpenAI request modules.

The messages follow OpenAI's where it has one ("Missing required parameter: 'model'.",
"Invalid type for 'temperature': expected a number, but got a string instead.",
"Invalid value: 'x'. Supported values are: 'a' and 'b'.", "Invalid 'n': integer above
maximum value. Expected a value <= 128, but got 129 instead.").
"""

from __future__ import annotations

from typing import NoReturn

from rakka_inference.api.fields import Expected, FieldReader, JsonPath
from rakka_inference.core.errors import BadRequest

__all__ = ["OpenAIWording", "invalid_type", "invalid_value", "json_kind", "read"]

_EXPECTED: dict[Expected, str] = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
}


def json_kind(value: object) -> str:
    """The JSON type of ``value`` as OpenAI's errors name it ("a string", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _json_path(path: JsonPath) -> str:
    """``path`` as OpenAI writes a ``param``: ``tools[0].function.parameters``."""
    return "".join(
        f"[{step}]" if isinstance(step, int) else f".{step}" if index else step
        for index, step in enumerate(path)
    )


def invalid_type(param: str, expected: str, value: object) -> NoReturn:
    """Raise OpenAI's type error: ``expected`` is a phrase ("a string or an array of strings")."""
    raise _type_error(param, expected, value)


def _type_error(param: str, expected: str, value: object) -> BadRequest:
    return BadRequest(
        f"Invalid type for '{param}': expected {expected}, but got {json_kind(value)} instead.",
        param=param,
    )


def invalid_value(param: str, value: object, supported: str) -> NoReturn:
    """Raise OpenAI's error for a value outside a set: ``supported`` lists the set."""
    raise BadRequest(f"Invalid value: {value!r}. Supported values are: {supported}.", param=param)


class OpenAIWording:
    """The :class:`~rakka_inference.api.fields.Wording` of OpenAI's API."""

    __slots__ = ()

    def missing(self, param: str) -> BadRequest:
        return BadRequest(f"Missing required parameter: '{param}'.", param=param)

    def wrong_type(self, param: str, expected: Expected, value: object) -> BadRequest:
        return _type_error(param, _EXPECTED[expected], value)

    def empty_string(self, param: str) -> BadRequest:
        return BadRequest(
            f"Invalid '{param}': empty string. Expected a string with minimum length 1.",
            param=param,
        )

    def empty_array(self, param: str) -> BadRequest:
        return BadRequest(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param=param,
        )

    def out_of_range(self, param: str, low: float, high: float) -> BadRequest:
        return BadRequest(
            f"Invalid '{param}': expected a number between {low:g} and {high:g}.", param=param
        )

    def too_many_items(self, param: str, limit: int, length: int) -> BadRequest:
        return BadRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{limit}, but got an array with length {length} instead.",
            param=param,
        )

    def integer_below(self, param: str, low: int, value: int) -> BadRequest:
        return BadRequest(
            f"Invalid '{param}': integer below minimum value. "
            f"Expected a value >= {low}, but got {value} instead.",
            param=param,
        )

    def integer_above(self, param: str, high: int, value: int) -> BadRequest:
        return BadRequest(
            f"Invalid '{param}': integer above maximum value. "
            f"Expected a value <= {high}, but got {value} instead.",
            param=param,
        )

    def not_json(self) -> BadRequest:
        return BadRequest("We could not parse the JSON body of your request: it is not valid JSON.")

    def not_an_object(self, document: object) -> BadRequest:
        return BadRequest(f"the request body must be a JSON object, not {json_kind(document)}")

    def too_deep(self, path: JsonPath, limit: int) -> BadRequest:
        param = _json_path(path)
        return BadRequest(
            f"Invalid '{param}': arrays and objects nest deeper than {limit} levels.", param=param
        )


read = FieldReader(OpenAIWording())
"""The field reader of every OpenAI request (chat completions, embeddings)."""
