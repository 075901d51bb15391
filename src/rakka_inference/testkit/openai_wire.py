"""Reading an OpenAI / Azure OpenAI request for :mod:`rakka_inference.testkit.mock_openai`.

Routing, the credential, the JSON body, and the checks of the body the real API makes,
raising :class:`InvalidRequest` with its 400s word for word; and what a chat asks for
(:class:`ChatRequest`: model, messages, streaming, the tool calls to answer with).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from rakka_inference.testkit.faults import ReplyScript, ScriptedToolCall
from rakka_inference.testkit.http_script import RecordedRequest

__all__ = [
    "NOT_JSON",
    "InvalidRequest",
    "Route",
    "ChatRequest",
    "parse_route",
    "api_version_of",
    "credential",
    "json_object",
    "read_chat",
    "request_model",
    "checked_messages",
    "require_answered",
    "planned_calls",
    "content_text",
    "message_texts",
    "prompt_text",
    "call_arguments",
    "embedding_inputs",
    "bounded_integer",
]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_AZURE_PATH = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)")
_MODEL_PATH = re.compile(r"/v1/models/([^/]+)")
NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)


class InvalidRequest(Exception):
    """The body breaks a rule the real API enforces: answered with its 400."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Route:
    azure: bool
    operation: str
    """``chat``, ``embeddings``, ``models`` or ``model``."""
    name: str | None = None
    """The Azure deployment, or the model ``GET /v1/models/{model}`` asks for."""
    api_version: str | None = None
    """Azure: the ``api-version`` query parameter."""


@dataclass(slots=True)
class ChatRequest:
    """What one chat request asks for, read from its body."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    reply: ReplyScript
    """The reply script as it was when the request came in."""
    calls: list[ScriptedToolCall]
    named: bool
    """The calls were forced by a named ``tool_choice``."""


def parse_route(request: RecordedRequest) -> Route | None:
    method, path = request.method, request.path
    if method == "POST":
        if path == "/v1/chat/completions":
            return Route(azure=False, operation="chat")
        if path == "/v1/embeddings":
            return Route(azure=False, operation="embeddings")
        if match := _AZURE_PATH.fullmatch(path):
            operation = "chat" if match[2] == "chat/completions" else "embeddings"
            return Route(True, operation, match[1], api_version_of(request))
    elif method == "GET":
        if path == "/v1/models":
            return Route(azure=False, operation="models")
        if path == "/openai/models":
            return Route(True, "models", api_version=api_version_of(request))
        if match := _MODEL_PATH.fullmatch(path):
            return Route(azure=False, operation="model", name=match[1])
    return None


def api_version_of(request: RecordedRequest) -> str | None:
    return next(iter(parse_qs(request.query).get("api-version", ())), None)


def credential(request: RecordedRequest, *, azure: bool) -> str | None:
    if azure and request.headers.get("api-key"):
        return request.headers["api-key"]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def read_chat(route: Route, body: dict[str, Any], reply: ReplyScript) -> ChatRequest:
    model = request_model(route, body)
    messages = checked_messages(body)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    calls, named = planned_calls(body, messages, reply)
    return ChatRequest(model, messages, stream, include_usage, reply, calls, named)


def request_model(route: Route, body: dict[str, Any]) -> str:
    model = body.get("model")
    if isinstance(model, str) and model:
        return model
    if route.name is not None:
        return route.name  # Azure: the deployment names the model
    raise InvalidRequest("you must provide a model parameter")


def checked_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages, checked as the real API checks them."""
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest(
            "Invalid type for 'messages': expected an array of objects.", "messages", "invalid_type"
        )
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            "messages",
            "empty_array",
        )
    open_calls: dict[str, int] | None = None  # calls of the assistant message just before
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"Invalid value: {role!r}. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.",
                f"messages[{index}].role",
                "invalid_value",
            )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if open_calls is None:
                raise InvalidRequest(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{index}].role",
                )
            if call_id not in open_calls:
                raise InvalidRequest(
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    f"messages.[{index}].tool_call_id",
                )
            del open_calls[call_id]
            continue
        require_answered(open_calls)
        calls = message.get("tool_calls") if role == "assistant" else None
        open_calls = {str(c.get("id")): index for c in calls} if calls else None
    require_answered(open_calls)
    return messages


def require_answered(open_calls: dict[str, int] | None) -> None:
    if open_calls:
        index = next(iter(open_calls.values()))
        raise InvalidRequest(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(open_calls)}",
            f"messages.[{index}].role",
        )


def planned_calls(
    body: dict[str, Any], messages: list[dict[str, Any]], reply: ReplyScript
) -> tuple[list[ScriptedToolCall], bool]:
    """The tool calls to answer with, and whether a named ``tool_choice`` forced them."""
    tools = body.get("tools") or ()
    names = [
        str(tool["function"].get("name"))
        for tool in tools
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    choice = body.get("tool_choice", "auto")
    if not names or choice == "none":
        return [], False
    named: str | None = None
    if isinstance(choice, dict):
        named = str((choice.get("function") or {}).get("name"))
    forced = named is not None or choice == "required"
    if not forced and messages[-1].get("role") == "tool":
        return [], False  # the results are in: the model answers them in words
    calls = [call for call in reply.tool_calls if named is None or call.name == named]
    if not calls and forced:
        calls = [ScriptedToolCall(named or names[0])]
    if body.get("parallel_tool_calls") is False:
        calls = calls[:1]
    return calls, named is not None


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def message_texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    for message in messages:
        yield content_text(message.get("content"))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                yield str((call.get("function") or {}).get("arguments") or "")


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """What the model answers: the trailing tool results, else the last user message."""
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, content_text(message.get("content")))
    if results:
        return " ".join(results)
    users = [m for m in messages if m.get("role") == "user"]
    return content_text(users[-1].get("content")) if users else ""


def bounded_integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    """The integer ``body[name]`` (None when absent or null), refused as the real API
    refuses one outside ``low..high`` (``n``: 1 to 128; ``top_logprobs``: 0 to 20)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected an integer, but got {_json_type(value)} instead.",
            name,
            "invalid_type",
        )
    if value < low:
        raise InvalidRequest(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    if value > high:
        raise InvalidRequest(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            name,
            "integer_above_max_value",
        )
    return value


def _json_type(value: object) -> str:
    kinds = ((bool, "a boolean"), (str, "a string"), (float, "a decimal"), (list, "an array"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "an object")


def call_arguments(call: ScriptedToolCall) -> str:
    return orjson.dumps(dict(call.arguments)).decode()


def embedding_inputs(value: Any) -> list[str]:
    if value is None:
        raise InvalidRequest(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return value
        if all(isinstance(item, int) for item in value):
            return [" ".join(map(str, value))]  # one input given as token ids
        if all(isinstance(item, list) for item in value):
            return [" ".join(map(str, item)) for item in value]
    raise InvalidRequest("'input' : input must be a string or an array of strings", "input")


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body's JSON object; None when it is not one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None
