"""Reading a Gemini request for :mod:`rakka_inference.testkit.mock_gemini`.

The route (AI Studio or Vertex URL, the method, ``alt=sse``, the credential) as a
:class:`GeminiCall`; the body checks the real API makes, raising :class:`InvalidArgument`
with its 400 messages word for word; and what an answer is made of: the prompt's texts and
the last user turn. Proto JSON's snake_case spellings are read alike
(:func:`~rakka_inference.testkit.proto_json.field`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from rakka_inference.testkit.faults import count_tokens
from rakka_inference.testkit.gemini_embed_wire import EMBEDDING_METHODS
from rakka_inference.testkit.http_script import RecordedRequest
from rakka_inference.testkit.proto_json import field, json_object, unknown_field

__all__ = [
    "GeminiCall",
    "InvalidArgument",
    "array_stream",
    "candidate_count",
    "contents_of",
    "first_words",
    "last_turn_text",
    "list_of",
    "mapping_of",
    "prompt_texts",
    "read_body",
    "route",
    "top_logprobs",
    "words",
]

_AI_STUDIO = re.compile(r"/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):(?P<method>\w+)")
_VERTEX = re.compile(
    r"/(?:v1|v1beta1)/projects/[^/]+/locations/[^/]+/publishers/google"
    r"/models/(?P<model>[^/:]+):(?P<method>\w+)"
)
_METHODS = frozenset(
    {"generateContent", "streamGenerateContent", "countTokens", *EMBEDDING_METHODS}
)
_FIELDS = frozenset(
    {
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
        "labels",
        "model",
    }
)


@dataclass(frozen=True, slots=True)
class GeminiCall:
    """One model call, as its URL and headers say."""

    vertex: bool
    model: str
    method: str
    sse: bool
    key: str | None


class InvalidArgument(Exception):
    """A body the API refuses with 400 ``INVALID_ARGUMENT``; ``message`` is its own."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def route(request: RecordedRequest) -> GeminiCall | None:
    """The model call ``request`` makes; None for a route the API does not have."""
    if request.method != "POST":
        return None
    vertex = _VERTEX.fullmatch(request.path)
    match = vertex or _AI_STUDIO.fullmatch(request.path)
    if match is None or match["method"] not in _METHODS:
        return None
    query = parse_qs(request.query)
    if vertex is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    else:
        key = request.headers.get("x-goog-api-key") or query.get("key", [None])[0]
    return GeminiCall(
        vertex=vertex is not None,
        model=unquote(match["model"]),
        method=match["method"],
        sse=query.get("alt", [""])[0] == "sse",
        key=key or None,
    )


def array_stream(call: GeminiCall) -> bool:
    """Whether errors go out as a JSON array: a stream without ``alt=sse``."""
    return call.method == "streamGenerateContent" and not call.sse


def read_body(request: RecordedRequest, call: GeminiCall) -> dict[str, Any]:
    """The body of a model call, or :class:`InvalidArgument` for what the API refuses."""
    try:
        body = json_object(request.body)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if call.method == "countTokens":
        return body
    unknown = unknown_field(body, _FIELDS)
    if unknown is not None:
        raise InvalidArgument(unknown)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidArgument("* GenerateContentRequest.contents: contents is not specified\n")
    for index, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise InvalidArgument(
                f"* GenerateContentRequest.contents[{index}].parts: "
                "contents.parts must not be empty.\n"
            )
        if content.get("role", "user") not in ("user", "model"):
            raise InvalidArgument("Please use a valid role: user, model.")
    return body


def contents_of(body: Mapping[str, Any]) -> list[Any]:
    """The request's ``contents``, or none."""
    return list_of(body.get("contents"))


def _part_texts(parts: Sequence[Any]) -> list[str]:
    """Each part as text: its text, or a function call or response as name and JSON."""
    texts: list[str] = []
    for part in parts:
        item = mapping_of(part)
        if isinstance(item.get("text"), str):
            texts.append(item["text"])
        for key, payload in (("functionCall", "args"), ("functionResponse", "response")):
            value = mapping_of(field(item, key))
            if value:
                texts.append(f"{value.get('name')} {orjson.dumps(value.get(payload)).decode()}")
    return texts


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    """Every text of ``systemInstruction`` and ``contents``, as the usage counts them."""
    system = mapping_of(field(body, "systemInstruction"))
    texts = _part_texts(list_of(system.get("parts")))
    for content in contents_of(body):
        texts.extend(_part_texts(list_of(mapping_of(content).get("parts"))))
    return texts


def last_turn_text(contents: Sequence[Any]) -> str:
    """What the echo answers: the last user turn's text, or its function responses."""
    for content in reversed(contents):
        turn = mapping_of(content)
        if turn.get("role", "user") != "user":
            continue
        parts = [mapping_of(part) for part in list_of(turn.get("parts"))]
        responses = [mapping_of(field(p, "functionResponse")) for p in parts]
        rendered = [
            f"{r.get('name')} returned {orjson.dumps(r.get('response')).decode()}"
            for r in responses
            if r
        ]
        if rendered:
            return "; ".join(rendered)
        return "".join(p["text"] for p in parts if isinstance(p.get("text"), str))
    return ""


def mapping_of(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def list_of(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def words(text: str) -> int:
    """Output tokens of ``text``: ``count_tokens`` without its floor of 1, so "" is 0."""
    return count_tokens([text]) if text.split() else 0


def first_words(text: str, limit: int) -> str:
    """``text`` up to the end of its ``limit``-th word."""
    if limit <= 0:
        return ""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    return text[: ends[limit - 1]]


def candidate_count(generation: Mapping[str, Any]) -> int:
    """How many candidates a ``generationConfig`` asks for: ``candidateCount`` (1 when
    absent), refused outside 1..8 as the API refuses it."""
    return _in_range(generation, "candidateCount", 1, 8) or 1


def top_logprobs(generation: Mapping[str, Any]) -> int | None:
    """How many alternatives per token a ``generationConfig`` asks for (``logprobs``, 0 when
    absent; refused outside 0..20); None: no log probabilities (``responseLogprobs`` not
    true)."""
    top = _in_range(generation, "logprobs", 0, 20) or 0
    return top if field(generation, "responseLogprobs") is True else None


def _in_range(generation: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = field(generation, name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgument(
            f"Unable to submit request because it has a {name} value of {value} but the "
            f"supported range is from {low} (inclusive) to {high + 1} (exclusive). Update the "
            "value and try again."
        )
    return value
