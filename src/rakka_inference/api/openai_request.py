"""OpenAI request JSON to our core values: the gateway's inbound edge, sans I/O.

:func:`parse_chat_request` and :func:`parse_embedding_request` take the raw body and
return validated core values, or raise :class:`~rakka_inference.core.errors.BadRequest`
(:class:`~rakka_inference.core.errors.PayloadTooLarge` for an oversized body) whose
``param`` is the path of the offending field, written as OpenAI writes it:
``messages[2].content[0].image_url.url``, ``tools[0].function.name``, ``temperature``.
Messages follow OpenAI's wording where it has one ("Missing required parameter: 'model'.",
"Invalid type for 'temperature': expected a number, but got a string instead.").
Range checks are left to the core constructors (one rule, every entry point), and a
``BadRequest`` they raise with a coarse ``param`` (``messages``, ``tools``) is refined
to the element's path.

Decisions:

- **Unknown top-level fields** are rejected as OpenAI does: "Unrecognized request argument
  supplied: X". Fields OpenAI documents that we cannot honour (``audio``,
  ``reasoning_effort``, ``functions``...) get "'X' is not supported by this gateway".
  A few are accepted when they hold their default, which changes nothing
  (:data:`INERT_PARAMS`: ``logprobs`` false, ``top_logprobs``/``logit_bias`` absent,
  ``store`` false, ``modalities`` ``["text"]``, ``service_tier`` auto/default); any other
  value is rejected. ``parallel_tool_calls`` is accepted (a boolean) and has no effect.
- **Unknown keys inside nested objects** (messages, parts, tools) are ignored: SDKs echo
  assistant messages back with extra fields (``refusal``, ``annotations``, ``audio``,
  ``reasoning_content``), and rejecting them would break ordinary agent loops.
- ``null`` for an optional field means "absent", as in OpenAI's API.
- ``max_tokens`` and ``max_completion_tokens`` both map to ``SamplingParams.max_tokens``;
  when both are given the **smaller** wins (the stricter cap is the one the client can
  rely on; OpenAI documents no precedence).
- ``n`` other than 1 is rejected: the renderers produce one choice.
- An assistant message whose ``content`` is null but which carries a ``refusal`` string
  (an SDK echoing a refused answer) takes the refusal as its text; ``refusal`` parts of
  assistant content likewise become text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, NoReturn, TypeAlias

import orjson

from rakka_inference.core.errors import BadRequest, PayloadTooLarge
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    EmbeddingRequest,
    ImagePart,
    ResponseFormat,
    Role,
    SamplingParams,
    TextPart,
)
from rakka_inference.core.tools import ToolCall, ToolChoice, ToolDefinition

__all__ = [
    "EmbeddingCall",
    "EncodingFormat",
    "INERT_PARAMS",
    "UNSUPPORTED_PARAMS",
    "parse_chat_request",
    "parse_embedding_request",
]

EncodingFormat: TypeAlias = Literal["float", "base64"]

_CHAT_PARAMS = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
        "stop", "seed", "presence_penalty", "frequency_penalty", "n", "user", "metadata",
        "tools", "tool_choice", "parallel_tool_calls", "response_format", "stream",
        "stream_options",
    }
)  # fmt: skip

INERT_PARAMS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (lambda v: v is None or v is False, "false"),
    "top_logprobs": (lambda v: v is None, "null"),
    "logit_bias": (lambda v: v is None or v == {}, "{}"),
    "store": (lambda v: v is None or v is False, "false"),
    "modalities": (lambda v: v is None or v == ["text"], '["text"]'),
    "service_tier": (lambda v: v in (None, "auto", "default"), '"auto"'),
}
"""OpenAI parameters accepted only with a value that changes nothing (and that default)."""

UNSUPPORTED_PARAMS = frozenset(
    {
        "audio", "prediction", "web_search_options", "functions", "function_call",
        "reasoning_effort", "verbosity", "prompt_cache_key", "safety_identifier",
    }
)  # fmt: skip
"""OpenAI parameters this gateway knows but cannot honour."""

_ROLES = {role.value: role for role in Role}
_STREAM_OPTIONS = frozenset({"include_usage", "include_obfuscation"})
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IMAGE_DETAILS = ("auto", "low", "high")
_UNSUPPORTED_PARTS = frozenset({"input_audio", "file", "audio"})
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
_MAX_EMBEDDING_INPUTS = 2048
_NOT_JSON = "We could not parse the JSON body of your request: it is not valid JSON."


class EmbeddingCall(NamedTuple):
    """A parsed embeddings request and the vector encoding the client asked for.

    ``encoding_format`` is kept beside the request because it is a property of the HTTP
    answer, not of the inference (the ``openai`` SDK asks for ``base64`` by default).
    """

    request: EmbeddingRequest
    encoding_format: EncodingFormat


# --------------------------------------------------------------------------- helpers


def _kind(value: object) -> str:
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


def _invalid_type(param: str, expected: str, value: object) -> NoReturn:
    raise BadRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param=param,
    )


def _missing(param: str) -> NoReturn:
    raise BadRequest(f"Missing required parameter: '{param}'.", param=param)


def _object(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _invalid_type(param, "an object", value)
    return value


def _array(value: object, param: str) -> list[Any]:
    if not isinstance(value, list):
        _invalid_type(param, "an array", value)
    if not value:
        raise BadRequest(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param=param,
        )
    return value


def _str(value: object, param: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            _missing(param)
        return None
    if not isinstance(value, str):
        _invalid_type(param, "a string", value)
    if required and not value:
        raise BadRequest(
            f"Invalid '{param}': empty string. Expected a string with minimum length 1.",
            param=param,
        )
    return value


def _required_str(value: object, param: str) -> str:
    text = _str(value, param, required=True)
    assert text is not None
    return text


def _number(value: object, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        _invalid_type(param, "a number", value)
    return float(value)


def _int(value: object, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        _invalid_type(param, "an integer", value)
    return value


def _bool(value: object, param: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        _invalid_type(param, "a boolean", value)
    return value


def _document(body: bytes, max_body_bytes: int | None) -> dict[str, Any]:
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise PayloadTooLarge(
            f"the request body is {len(body)} bytes; the limit is {max_body_bytes} bytes"
        )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest(_NOT_JSON) from None
    if not isinstance(document, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_kind(document)}")
    return document


def _model(document: Mapping[str, Any]) -> str:
    return _required_str(document.get("model"), "model")


# --------------------------------------------------------------------------- chat


def parse_chat_request(
    body: bytes, *, request_id: str, max_body_bytes: int | None = None
) -> ChatRequest:
    """A ``POST /v1/chat/completions`` body as a validated :class:`ChatRequest`.

    Raises :class:`BadRequest` with ``param`` naming the offending field, or
    :class:`PayloadTooLarge` when ``body`` exceeds ``max_body_bytes``. See the module
    docstring for the rules.
    """
    document = _document(body, max_body_bytes)
    for key, value in document.items():
        if key in _CHAT_PARAMS:
            continue
        inert = INERT_PARAMS.get(key)
        if inert is not None:
            if not inert[0](value):
                raise BadRequest(
                    f"'{key}' is supported only with its default value ({inert[1]})", param=key
                )
        elif key in UNSUPPORTED_PARAMS:
            raise BadRequest(f"'{key}' is not supported by this gateway", param=key)
        else:
            raise BadRequest(f"Unrecognized request argument supplied: {key}", param=key)
    model = _model(document)
    raw_messages = document.get("messages")
    if raw_messages is None:
        _missing("messages")
    messages = tuple(
        _message(item, f"messages[{index}]")
        for index, item in enumerate(_array(raw_messages, "messages"))
    )
    tools = _tools(document.get("tools"))
    _bool(document.get("parallel_tool_calls"), "parallel_tool_calls")
    stream = bool(_bool(document.get("stream"), "stream"))
    include_usage = _stream_options(document.get("stream_options"), stream)
    return ChatRequest(
        model=model,
        messages=messages,
        sampling=_sampling(document),
        tools=tools,
        tool_choice=_tool_choice(document.get("tool_choice")),
        response_format=_response_format(document.get("response_format")),
        stream=stream,
        include_usage=include_usage,
        user=_str(document.get("user"), "user"),
        metadata=_metadata(document.get("metadata")),
        request_id=request_id,
    )


def _sampling(document: Mapping[str, Any]) -> SamplingParams:
    caps: list[int] = []
    for name in ("max_tokens", "max_completion_tokens"):
        cap = _int(document.get(name), name)
        if cap is not None:
            if cap < 1:
                raise BadRequest(f"{name} must be at least 1", param=name)
            caps.append(cap)
    n = _int(document.get("n"), "n")
    if n is not None and n > 1:
        raise BadRequest("only n = 1 is supported", param="n")
    return SamplingParams(
        temperature=_number(document.get("temperature"), "temperature"),
        top_p=_number(document.get("top_p"), "top_p"),
        max_tokens=min(caps) if caps else None,
        stop=_stop(document.get("stop")),
        seed=_int(document.get("seed"), "seed"),
        presence_penalty=_number(document.get("presence_penalty"), "presence_penalty"),
        frequency_penalty=_number(document.get("frequency_penalty"), "frequency_penalty"),
        n=1 if n is None else n,
    )


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        _invalid_type("stop", "a string or an array of strings", value)
    for index, item in enumerate(value):
        _str(item, f"stop[{index}]")
    return tuple(value)


def _stream_options(value: object, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise BadRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    options = _object(value, "stream_options")
    for key in options:
        if key not in _STREAM_OPTIONS:
            raise BadRequest(
                f"Unrecognized request argument supplied: stream_options.{key}",
                param=f"stream_options.{key}",
            )
    _bool(options.get("include_obfuscation"), "stream_options.include_obfuscation")
    return bool(_bool(options.get("include_usage"), "stream_options.include_usage"))


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    metadata = _object(value, "metadata")
    if len(metadata) > _METADATA_PAIRS:
        raise BadRequest(
            f"metadata holds at most {_METADATA_PAIRS} key-value pairs", param="metadata"
        )
    for key, item in metadata.items():
        param = f"metadata.{key}"
        if len(key) > _METADATA_KEY:
            raise BadRequest(f"metadata keys are at most {_METADATA_KEY} characters", param=param)
        if not isinstance(item, str):
            _invalid_type(param, "a string", item)
        if len(item) > _METADATA_VALUE:
            raise BadRequest(
                f"metadata values are at most {_METADATA_VALUE} characters", param=param
            )
    return metadata


# --------------------------------------------------------------------------- messages


def _message(value: object, param: str) -> ChatMessage:
    message = _object(value, param)
    raw_role = message.get("role")
    if raw_role is None:
        _missing(f"{param}.role")
    role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        if raw_role == "function":
            raise BadRequest(
                "the deprecated 'function' role is not supported; use 'tool' messages",
                param=f"{param}.role",
            )
        raise BadRequest(
            f"Invalid value: {raw_role!r}. Supported values are: 'system', 'developer', "
            "'user', 'assistant' and 'tool'.",
            param=f"{param}.role",
        )
    tool_calls: tuple[ToolCall, ...] = ()
    raw_calls = message.get("tool_calls")
    if raw_calls is not None:
        if role is not Role.ASSISTANT:
            raise BadRequest(
                f"only assistant messages may carry tool_calls, not {role.value}",
                param=f"{param}.tool_calls",
            )
        tool_calls = tuple(
            _tool_call(call, f"{param}.tool_calls[{index}]")
            for index, call in enumerate(_array(raw_calls, f"{param}.tool_calls"))
        )
    tool_call_id = _str(message.get("tool_call_id"), f"{param}.tool_call_id")
    if role is Role.TOOL:
        tool_call_id = _required_str(tool_call_id, f"{param}.tool_call_id")
    elif tool_call_id is not None:
        raise BadRequest(
            f"tool_call_id belongs on tool messages, not {role.value}",
            param=f"{param}.tool_call_id",
        )
    content = _content(message.get("content"), role, f"{param}.content")
    if content is None and role is Role.ASSISTANT:
        content = _str(message.get("refusal"), f"{param}.refusal")
    if content is None and not tool_calls:
        _missing(f"{param}.content")
    name = _str(message.get("name"), f"{param}.name")
    try:
        return ChatMessage(
            role=role, content=content, name=name, tool_calls=tool_calls, tool_call_id=tool_call_id
        )
    except BadRequest as error:  # pragma: no cover - every core rule is checked above
        # This keeps a rule added to the core later from surfacing as the bare "messages".
        if error.param == "messages":
            error.param = param
        raise


def _content(value: object, role: Role, param: str) -> str | tuple[ContentPart, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        _invalid_type(param, "a string or an array of content parts", value)
    return tuple(
        _part(item, role, f"{param}[{index}]") for index, item in enumerate(_array(value, param))
    )


def _part(value: object, role: Role, param: str) -> ContentPart:
    part = _object(value, param)
    kind = part.get("type")
    if kind == "text":
        return TextPart(text=_str(part.get("text"), f"{param}.text", required=False) or "")
    if kind == "refusal" and role is Role.ASSISTANT:
        return TextPart(text=_str(part.get("refusal"), f"{param}.refusal") or "")
    if kind == "image_url":
        if role is not Role.USER:
            raise BadRequest(
                f"image content is accepted in user messages only, not {role.value}",
                param=f"{param}.type",
            )
        return _image(part.get("image_url"), f"{param}.image_url")
    if kind is None:
        _missing(f"{param}.type")
    if kind in _UNSUPPORTED_PARTS:
        raise BadRequest(
            f"content parts of type {kind!r} are not supported by this gateway",
            param=f"{param}.type",
        )
    allowed = "'text' and 'image_url'" if role is Role.USER else "'text'"
    raise BadRequest(
        f"Invalid value: {kind!r}. Supported values are: {allowed}.", param=f"{param}.type"
    )


def _image(value: object, param: str) -> ImagePart:
    if value is None:
        _missing(param)
    image = _object(value, param)
    url = _required_str(image.get("url"), f"{param}.url")
    detail = _str(image.get("detail"), f"{param}.detail")
    if detail is not None and detail not in _IMAGE_DETAILS:
        raise BadRequest(
            f"Invalid value: {detail!r}. Supported values are: 'auto', 'low' and 'high'.",
            param=f"{param}.detail",
        )
    part = ImagePart(url=url, detail=detail)  # type: ignore[arg-type]  # checked above
    if part.is_data_url:
        part.parse_data_url(param=f"{param}.url")
    elif not url.lower().startswith(("https://", "http://")):
        raise BadRequest(
            "image URL must be an http(s) URL or a base64 data: URL", param=f"{param}.url"
        )
    return part


def _tool_call(value: object, param: str) -> ToolCall:
    call = _object(value, param)
    call_id = _required_str(call.get("id"), f"{param}.id")
    kind = call.get("type")
    if kind is not None and kind != "function":
        raise BadRequest(
            f"Invalid value: {kind!r}. Supported values are: 'function'.", param=f"{param}.type"
        )
    function_param = f"{param}.function"
    if call.get("function") is None:
        _missing(function_param)
    function = _object(call["function"], function_param)
    name = _required_str(function.get("name"), f"{function_param}.name")
    arguments = _str(function.get("arguments"), f"{function_param}.arguments")
    if arguments is None:
        _missing(f"{function_param}.arguments")
    return ToolCall(id=call_id, name=name, arguments=arguments)


# --------------------------------------------------------------------------- tools


def _tools(value: object) -> tuple[ToolDefinition, ...]:
    if value is None:
        return ()
    return tuple(
        _tool(item, f"tools[{index}]") for index, item in enumerate(_array(value, "tools"))
    )


def _tool(value: object, param: str) -> ToolDefinition:
    tool = _object(value, param)
    kind = tool.get("type")
    if kind != "function":
        if kind is None:
            _missing(f"{param}.type")
        raise BadRequest(
            f"Invalid value: {kind!r}. Supported values are: 'function'.", param=f"{param}.type"
        )
    function_param = f"{param}.function"
    if tool.get("function") is None:
        _missing(function_param)
    function = _object(tool["function"], function_param)
    name_param = f"{function_param}.name"
    name = _required_str(function.get("name"), name_param)
    parameters = function.get("parameters")
    try:
        return ToolDefinition(
            name=name,
            description=_str(function.get("description"), f"{function_param}.description"),
            parameters=(
                {"type": "object", "properties": {}}
                if parameters is None
                else _object(parameters, f"{function_param}.parameters")
            ),
            strict=_bool(function.get("strict"), f"{function_param}.strict"),
        )
    except BadRequest as error:
        if error.param == "tools":  # the core's name rule
            error.param = name_param
        raise


def _tool_choice(value: object) -> ToolChoice | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value == "auto":
            return ToolChoice.auto()
        if value == "none":
            return ToolChoice.none()
        if value == "required":
            return ToolChoice.required()
        raise BadRequest(
            f"Invalid value: {value!r}. Supported values are: 'none', 'auto' and 'required'.",
            param="tool_choice",
        )
    choice = _object(value, "tool_choice")
    kind = choice.get("type")
    if kind != "function":
        raise BadRequest(
            f"Invalid value: {kind!r}. Supported values are: 'function'.",
            param="tool_choice.type",
        )
    if choice.get("function") is None:
        _missing("tool_choice.function")
    function = _object(choice["function"], "tool_choice.function")
    return ToolChoice.named(_required_str(function.get("name"), "tool_choice.function.name"))


def _response_format(value: object) -> ResponseFormat | None:
    if value is None:
        return None
    spec = _object(value, "response_format")
    kind = spec.get("type")
    if kind == "text":
        return ResponseFormat.text()
    if kind == "json_object":
        return ResponseFormat.json_object()
    if kind != "json_schema":
        if kind is None:
            _missing("response_format.type")
        raise BadRequest(
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object' and "
            "'json_schema'.",
            param="response_format.type",
        )
    if spec.get("json_schema") is None:
        _missing("response_format.json_schema")
    schema = _object(spec["json_schema"], "response_format.json_schema")
    name = _required_str(schema.get("name"), "response_format.json_schema.name")
    if not _SCHEMA_NAME.fullmatch(name):
        raise BadRequest(
            f"schema name {name!r} must be 1-64 letters, digits, '_' or '-'",
            param="response_format.json_schema.name",
        )
    body = schema.get("schema")
    if body is None:
        _missing("response_format.json_schema.schema")
    return ResponseFormat.from_schema(
        name,
        _object(body, "response_format.json_schema.schema"),
        strict=_bool(schema.get("strict"), "response_format.json_schema.strict"),
    )


# --------------------------------------------------------------------------- embeddings

_EMBEDDING_PARAMS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


def parse_embedding_request(
    body: bytes, *, request_id: str, max_body_bytes: int | None = None
) -> EmbeddingCall:
    """A ``POST /v1/embeddings`` body as an :class:`EmbeddingCall`.

    ``input`` is a string or an array of non-empty strings (at most 2048); token-id
    inputs are rejected. ``encoding_format`` is ``float`` (the default) or ``base64``.
    """
    document = _document(body, max_body_bytes)
    for key in document:
        if key not in _EMBEDDING_PARAMS:
            raise BadRequest(f"Unrecognized request argument supplied: {key}", param=key)
    model = _model(document)
    encoding = _str(document.get("encoding_format"), "encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise BadRequest(
            f"Invalid value: {encoding!r}. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
        )
    request = EmbeddingRequest(
        model=model,
        inputs=_embedding_inputs(document.get("input")),
        dimensions=_int(document.get("dimensions"), "dimensions"),
        user=_str(document.get("user"), "user"),
        request_id=request_id,
    )
    return EmbeddingCall(request, "base64" if encoding == "base64" else "float")


def _embedding_inputs(value: object) -> tuple[str, ...]:
    if value is None:
        _missing("input")
    if isinstance(value, str):
        return (_required_str(value, "input"),)
    items = _array(value, "input")
    if len(items) > _MAX_EMBEDDING_INPUTS:
        raise BadRequest(
            f"input holds at most {_MAX_EMBEDDING_INPUTS} strings, got {len(items)}",
            param="input",
        )
    for index, item in enumerate(items):
        if isinstance(item, int | list) and not isinstance(item, bool):
            raise BadRequest(
                "token-id input is not supported by this gateway; send strings",
                param=f"input[{index}]",
            )
        _required_str(item, f"input[{index}]")
    return tuple(items)
