"""Proto3 JSON as Google's APIs read it, for the Gemini mock's request checks.

A message's fields are spelled lowerCamelCase (``generationConfig``), and the parser also
accepts their snake_case spelling (``generation_config``): :func:`field` reads either, and
:func:`unknown_field` names a field the message does not have, in the API's own 400
wording. :func:`json_object` reads a body that must be a JSON object, with the API's
messages for one that is not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["camel_case", "field", "json_object", "unknown_field"]


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object; ValueError with the API's message if it is none."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("Invalid JSON payload received. Unexpected token.") from None
    if not isinstance(document, dict):
        raise ValueError("Invalid JSON payload received. Expected an object.")
    return document


def field(holder: Mapping[str, Any], camel: str) -> Any:
    """``holder[camel]``, or its snake_case spelling, which proto JSON also accepts."""
    if camel in holder:
        return holder[camel]
    return holder.get(re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower())


def camel_case(name: str) -> str:
    """A field name as the message declares it: ``output_dimensionality`` →
    ``outputDimensionality`` (a camelCase name is returned as it is)."""
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def unknown_field(holder: Mapping[str, Any], known: frozenset[str], prefix: str = "") -> str | None:
    """The API's message for the first name in ``holder`` that is not one of ``known``
    (camelCase names; either spelling matches), quoted after ``prefix``; None if all are."""
    for name in holder:
        if camel_case(name) not in known:
            return (
                f'Invalid JSON payload received. Unknown name "{prefix}{name}": Cannot find field.'
            )
    return None
