"""The provider-neutral request: what a client asked for, validated once.

The gateway speaks OpenAI's chat completions API, so these records follow its shape
(roles, content parts, tool calls with JSON-text arguments). The HTTP edge parses JSON into
them; provider adapters translate them to Anthropic's or Gemini's wire format. Nothing here
knows about either end.

Validation that does not need the wire format lives here and raises
:class:`~rakka_inference.core.errors.BadRequest` with ``param`` naming the offending field,
so every entry point (HTTP, the Python API, tests) rejects the same requests the same way.
"""

from __future__ import annotations

import base64
import enum
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.tools import ToolCall, ToolChoice, ToolChoiceMode, ToolDefinition
from rakka_inference.core.usage import Usage

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "REASONING_EFFORTS",
    "THINKING_BUDGETS",
    "Role",
    "TextPart",
    "ImagePart",
    "DocumentPart",
    "ReasoningBlock",
    "ImageDetail",
    "ContentPart",
    "ChatMessage",
    "ResponseFormat",
    "SamplingParams",
    "Priority",
    "ChatRequest",
    "EmbeddingRequest",
    "EmbeddingResult",
    "new_request_id",
    "refuse_openai_options",
    "refuse_choices_and_logprobs",
    "MAX_CHOICES",
    "MAX_TOP_LOGPROBS",
    "MAX_STOP_SEQUENCES",
    "MAX_EMBEDDING_DIMENSIONS",
    "MAX_OUTPUT_TOKENS",
    "MAX_TOP_K",
    "SEED_RANGE",
    "MAX_STOP_LENGTH",
    "MAX_TOOLS",
    "MAX_USER_LENGTH",
]

DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""The output cap assumed for a request that sets no ``max_tokens``, where its runtime names
none of its own: what the limiter estimates and the budget reserves until usage settles."""

MAX_STOP_SEQUENCES = 4
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
"""The reasoning efforts OpenAI's reasoning models take, least first."""
THINKING_BUDGETS: Mapping[str, int] = {
    "none": 0,
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
}
"""The thinking budget (tokens) an effort becomes for a model that takes a budget rather
than an effort (Anthropic's extended thinking, Gemini's ``thinkingBudget``). 1024 is the
least Anthropic takes; 24576 the most Gemini Flash takes."""
"""OpenAI accepts at most four stop sequences; so do we, whatever the provider."""

MAX_CHOICES = 128
"""The most choices (``n``) a chat request may ask for: OpenAI's own limit."""
MAX_TOP_LOGPROBS = 20
"""The most alternatives per token ``top_logprobs`` may ask for: OpenAI's own limit."""

MAX_EMBEDDING_DIMENSIONS = 65536
"""The largest ``dimensions`` an embeddings request may ask for: far above any model's
vector size, low enough that no runner is asked to allocate a vector of millions."""

# Every number a client sends has a bound, checked here (one rule, every entry point) and,
# with the dialect's own parameter name and wording, where the HTTP edge reads it. A bound
# is either the API's own (OpenAI's, Anthropic's) or, where the APIs name none, far above
# any real use and low enough that nothing downstream (the limiter's and the budget's
# reservations, a provider's integer fields, a local runner's stop matching) is asked to
# hold an absurd figure.

MAX_OUTPUT_TOKENS = 1 << 20
"""The largest output cap (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``) and thinking budget a request may set: 1,048,576 tokens, above every
model's output limit. The limiter and the budget reserve up to ``n`` times this."""
MAX_TOP_K = 1 << 20
"""The largest ``top_k``: above every tokenizer's vocabulary (the largest hold ~262k)."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""``seed`` is a signed 64-bit integer, as OpenAI takes it."""
MAX_STOP_LENGTH = 1024
"""The longest stop sequence, in characters. A local runner holds back up to this much of
an answer while it may still be the start of a stop, and compares it at every token."""
MAX_TOOLS = 128
"""The most tools a request may offer: OpenAI's own limit, kept whatever the provider (as
the four stop sequences are)."""
MAX_USER_LENGTH = 256
"""The longest end-user id (OpenAI's ``user``, Anthropic's ``metadata.user_id``):
Anthropic's own limit."""


def new_request_id() -> str:
    """A fresh request id: ``req_`` and 32 hex digits."""
    return f"req_{uuid.uuid4().hex}"


class Role(enum.StrEnum):
    """Who wrote a message. ``developer`` is OpenAI's newer name for system instructions."""

    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


# --------------------------------------------------------------------------- content


@dataclass(frozen=True, slots=True, kw_only=True)
class TextPart:
    """A piece of text inside a message's content."""

    text: str


ImageDetail: TypeAlias = Literal["auto", "low", "high"]

# RFC 2397: data:[<mediatype>][;param=value]*[;base64],<data>. We accept only base64 data
# with an explicit media type: every provider that takes inline images needs both.
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePart:
    """An image inside a user message: an ``https:`` URL or a base64 ``data:`` URL.

    ``detail`` is OpenAI's resolution hint; providers without one ignore it.
    """

    url: str
    detail: ImageDetail | None = None

    @classmethod
    def from_base64(
        cls, media_type: str, data: str, *, detail: ImageDetail | None = None
    ) -> ImagePart:
        """An image given inline, as ``data:{media_type};base64,{data}``."""
        return cls(url=f"data:{media_type};base64,{data}", detail=detail)

    @property
    def is_data_url(self) -> bool:
        """Whether the image is inline (a ``data:`` URL) rather than fetched by URL."""
        return self.url[:5].lower() == "data:"

    def parse_data_url(self, *, param: str = "messages") -> tuple[str, str]:
        """``(media_type, base64_data)`` of an inline image.

        Raises :class:`BadRequest` with ``param`` set when the URL is not a well-formed
        base64 data URL. Pass the field path as ``param`` when it is known, such as
        ``messages[2].content[1].image_url``. The data is checked for the base64
        alphabet and padding, not decoded.
        """
        return _parse_data_url(self.url, param)

    def decode_data(self, *, param: str = "messages") -> tuple[str, bytes]:
        """``(media_type, bytes)`` of an inline image, for runners that need the pixels."""
        media_type, data = self.parse_data_url(param=param)
        # parse_data_url checked the alphabet, the padding and the length, so this decodes.
        return media_type, base64.b64decode(data)


def _parse_data_url(url: str, param: str) -> tuple[str, str]:
    """``(media_type, base64_data)`` of a base64 ``data:`` URL (see ImagePart's)."""
    if url[:5].lower() != "data:":
        raise BadRequest("the URL is not a data: URL", param=param)
    header, comma, data = url[5:].partition(",")
    if not comma:
        raise BadRequest("malformed data URL: no ',' before the data", param=param)
    media_type, *attributes = header.split(";")
    if not attributes or attributes[-1].lower() != "base64":
        raise BadRequest("data URL must be base64-encoded (';base64,')", param=param)
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise BadRequest(f"data URL has no valid media type: {media_type!r}", param=param)
    if not data or len(data) % 4 or not _BASE64_BODY.fullmatch(data):
        raise BadRequest("data URL does not hold valid base64 data", param=param)
    return media_type.lower(), data


PDF = "application/pdf"


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentPart:
    """A PDF document inside a user message: a base64 ``data:application/pdf`` URL, or an
    ``https:`` URL the provider fetches; ``filename`` where the client named it.

    OpenAI's ``file`` parts (``file_data``), Anthropic's ``document`` blocks and the
    Responses API's ``input_file`` items all become one of these; each provider takes it
    in its own terms, or refuses it with a 400 naming the part.
    """

    url: str
    filename: str | None = None

    @classmethod
    def from_base64(cls, data: str, *, filename: str | None = None) -> DocumentPart:
        """A PDF given inline, as ``data:application/pdf;base64,{data}``."""
        return cls(url=f"data:{PDF};base64,{data}", filename=filename)

    @property
    def is_data_url(self) -> bool:
        return self.url[:5].lower() == "data:"

    def base64_data(self, *, param: str = "messages") -> str:
        """The base64 PDF of an inline document; a 400 naming ``param`` when the URL is
        not a well-formed base64 data URL of a PDF."""
        media_type, data = _parse_data_url(self.url, param)
        if media_type != PDF:
            raise BadRequest(f"documents must be PDFs ({PDF}), not {media_type!r}", param=param)
        return data


ContentPart: TypeAlias = TextPart | ImagePart | DocumentPart


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningBlock:
    """One block of a model's thinking, as the model's provider signed it.

    Anthropic's extended thinking answers with ``thinking`` blocks (the text and a
    ``signature`` over it) and ``redacted_thinking`` blocks (``redacted``: opaque data, no
    text). In a tool loop the assistant turn that called the tools must be sent back with
    its thinking blocks, unchanged, before its tool calls: the signature is how the provider
    knows they are its own. A block with no signature (a provider that signs nothing) is
    text only, and a provider that takes no prior thinking leaves it out of the prompt.
    """

    text: str = ""
    signature: str = ""
    redacted: str = ""
    """The opaque data of a redacted block; then ``text`` and ``signature`` are empty."""

    def __post_init__(self) -> None:
        if self.redacted and (self.text or self.signature):
            raise BadRequest("a redacted thinking block carries its data only", param="messages")

    @property
    def signed(self) -> bool:
        """Whether a provider can verify the block: it has a signature or is redacted."""
        return bool(self.signature or self.redacted)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    """One message of a conversation.

    ``content`` is a plain string or a tuple of parts. It may be ``None`` only on an
    assistant message that carries ``tool_calls``. Images are accepted on user messages
    only, as OpenAI does. A tool message answers one tool call, named by ``tool_call_id``.
    """

    role: Role
    content: str | tuple[ContentPart, ...] | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    reasoning: tuple[ReasoningBlock, ...] = ()
    """The thinking an assistant turn began with, as its provider returned it (see
    :class:`ReasoningBlock`); only on assistant messages."""

    def __post_init__(self) -> None:
        role = self.role
        if self.reasoning and role is not Role.ASSISTANT:
            raise BadRequest(
                f"only assistant messages may carry thinking, not {role.value}",
                param="messages",
            )
        if self.tool_calls and role is not Role.ASSISTANT:
            raise BadRequest(
                f"only assistant messages may carry tool_calls, not {role.value}",
                param="messages",
            )
        if role is Role.TOOL:
            if not self.tool_call_id:
                raise BadRequest("a tool message needs a tool_call_id", param="messages")
        elif self.tool_call_id is not None:
            raise BadRequest(
                f"tool_call_id belongs on tool messages, not {role.value}", param="messages"
            )
        if self.content is None or self.content == ():
            if not (role is Role.ASSISTANT and (self.tool_calls or self.reasoning)):
                raise BadRequest(f"a {role.value} message needs content", param="messages")
        elif (
            role is not Role.USER
            and not isinstance(self.content, str)
            and any(not isinstance(part, TextPart) for part in self.content)
        ):
            raise BadRequest(
                f"images and documents are accepted in user messages only, not {role.value}",
                param="messages",
            )

    # Constructors for the common shapes, so callers need not spell out roles.

    @classmethod
    def system(cls, text: str) -> ChatMessage:
        return cls(role=Role.SYSTEM, content=text)

    @classmethod
    def developer(cls, text: str) -> ChatMessage:
        return cls(role=Role.DEVELOPER, content=text)

    @classmethod
    def user(cls, content: str | tuple[ContentPart, ...]) -> ChatMessage:
        return cls(role=Role.USER, content=content)

    @classmethod
    def assistant(
        cls,
        text: str | None = None,
        *,
        tool_calls: tuple[ToolCall, ...] = (),
        reasoning: tuple[ReasoningBlock, ...] = (),
    ) -> ChatMessage:
        return cls(role=Role.ASSISTANT, content=text, tool_calls=tool_calls, reasoning=reasoning)

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> ChatMessage:
        return cls(role=Role.TOOL, content=content, tool_call_id=tool_call_id)

    @property
    def thought_only(self) -> bool:
        """An assistant turn that holds thinking only (no content, no tool calls): a
        provider that takes no prior thinking has nothing of it to send."""
        return self.content is None and not self.tool_calls

    @property
    def parts(self) -> tuple[ContentPart, ...]:
        """The content as parts: a string is one text part, ``None`` is no parts."""
        if self.content is None:
            return ()
        if isinstance(self.content, str):
            return (TextPart(text=self.content),)
        return self.content

    @property
    def text(self) -> str:
        """All text of the message. Several text parts are joined with newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def documents(self) -> tuple[DocumentPart, ...]:
        if self.content is None or isinstance(self.content, str):
            return ()
        return tuple(part for part in self.content if isinstance(part, DocumentPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        if self.content is None or isinstance(self.content, str):
            return ()
        return tuple(part for part in self.content if isinstance(part, ImagePart))


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFormat:
    """What shape the answer must take: free text, any JSON object, or a JSON Schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Mapping[str, Any] | None = None
    """The schema itself (OpenAI's ``json_schema.schema``); only with type json_schema."""
    schema_name: str | None = None
    """OpenAI requires a name for the schema (``json_schema.name``)."""
    strict: bool | None = None

    def __post_init__(self) -> None:
        if self.type == "json_schema":
            if self.json_schema is None or not self.schema_name:
                raise BadRequest(
                    "response_format json_schema needs a schema and a name",
                    param="response_format",
                )
        elif self.json_schema is not None or self.schema_name is not None:
            raise BadRequest(
                f"response_format {self.type} takes no schema", param="response_format"
            )

    @classmethod
    def text(cls) -> ResponseFormat:
        return cls(type="text")

    @classmethod
    def json_object(cls) -> ResponseFormat:
        return cls(type="json_object")

    @classmethod
    def from_schema(
        cls, name: str, schema: Mapping[str, Any], *, strict: bool | None = None
    ) -> ResponseFormat:
        return cls(type="json_schema", json_schema=schema, schema_name=name, strict=strict)


def _check_range(param: str, value: float | None, low: float, high: float) -> None:
    # Written as "not (low <= v <= high)" so NaN, which compares false, is rejected too.
    if value is not None and not low <= value <= high:
        raise BadRequest(f"{param} must be between {low:g} and {high:g}", param=param)


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How to sample. ``None`` leaves a setting to the provider's default.

    ``max_tokens`` is the cap on generated tokens. OpenAI has two names for it
    (``max_tokens`` and the newer ``max_completion_tokens``, which also counts reasoning
    tokens); the HTTP edge maps either into this one field. Ranges follow OpenAI's.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int = 1
    """Number of choices to generate, 1 to :data:`MAX_CHOICES`."""
    logprobs: bool = False
    """Return each generated token's log probability (OpenAI's ``logprobs``)."""
    top_logprobs: int | None = None
    """With :attr:`logprobs`: this many likeliest alternatives per token, 0 to
    :data:`MAX_TOP_LOGPROBS` (OpenAI's ``top_logprobs``)."""
    reasoning_effort: str | None = None
    """How hard a reasoning model thinks: one of :data:`REASONING_EFFORTS` (OpenAI's
    ``reasoning_effort``, the Responses API's ``reasoning.effort``)."""
    top_k: int | None = None
    """Sample from the ``top_k`` likeliest tokens only (Anthropic's and Gemini's
    ``top_k``; OpenAI's API has none)."""
    thinking_budget: int | None = None
    """A thinking budget in tokens, as Anthropic's ``thinking.budget_tokens`` sets it; the
    other way to ask for reasoning than :attr:`reasoning_effort`, never with it."""

    def __post_init__(self) -> None:
        if self.top_k is not None and not 1 <= self.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}", param="top_k")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise BadRequest("seed must be a signed 64-bit integer", param="seed")
        if self.thinking_budget is not None:
            if not 1 <= self.thinking_budget <= MAX_OUTPUT_TOKENS:
                raise BadRequest(
                    f"thinking budget must be between 1 and {MAX_OUTPUT_TOKENS}", param="thinking"
                )
            if self.reasoning_effort is not None:
                raise BadRequest(
                    "ask for reasoning with an effort or a thinking budget, not both",
                    param="thinking",
                )
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise BadRequest(
                f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}",
                param="reasoning_effort",
            )
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_p", self.top_p, 0.0, 1.0)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.max_tokens is not None and not 1 <= self.max_tokens <= MAX_OUTPUT_TOKENS:
            raise BadRequest(
                f"max_tokens must be between 1 and {MAX_OUTPUT_TOKENS}", param="max_tokens"
            )
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise BadRequest(
                f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop"
            )
        if any(not sequence for sequence in self.stop):
            raise BadRequest("stop sequences must not be empty", param="stop")
        if any(len(sequence) > MAX_STOP_LENGTH for sequence in self.stop):
            raise BadRequest(
                f"stop sequences are at most {MAX_STOP_LENGTH} characters", param="stop"
            )
        if self.n < 1:
            raise BadRequest("n must be at least 1", param="n")
        if self.n > MAX_CHOICES:
            raise BadRequest(f"n must be at most {MAX_CHOICES}", param="n")
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
                raise BadRequest(
                    f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs"
                )
            if not self.logprobs:
                raise BadRequest("top_logprobs needs logprobs set to true", param="top_logprobs")

    @property
    def thinks(self) -> bool:
        """Whether the request asks the model to reason (an effort but ``none``, or a
        budget)."""
        return self.thinking_budget is not None or self.reasoning_effort not in (None, "none")

    @property
    def effort(self) -> str | None:
        """The reasoning effort asked for: :attr:`reasoning_effort`, or for a budget the
        greatest effort whose :data:`THINKING_BUDGETS` figure it reaches (``minimal``
        below 2048), for a model that takes an effort."""
        if self.thinking_budget is None:
            return self.reasoning_effort
        reached = [e for e in REASONING_EFFORTS[1:] if THINKING_BUDGETS[e] <= self.thinking_budget]
        return reached[-1] if reached else "minimal"

    @property
    def thinking_tokens(self) -> int | None:
        """The thinking budget asked for: :attr:`thinking_budget`, or the effort's
        :data:`THINKING_BUDGETS` figure (0 for ``none``); None when neither is set."""
        if self.thinking_budget is not None:
            return self.thinking_budget
        if self.reasoning_effort is None:
            return None
        return THINKING_BUDGETS[self.reasoning_effort]


def refuse_openai_options(request: ChatRequest, who: str) -> None:
    """A 400 naming the first OpenAI-only option ``request`` sets (``metadata`` among
    them), which ``who`` (a provider, a runtime) cannot take."""
    if request.metadata:
        raise BadRequest(
            f"'metadata' is taken only by OpenAI-format deployments, not {who}", param="metadata"
        )
    for name in request.openai_options:
        raise BadRequest(
            f"'{name}' is taken only by OpenAI-format deployments, not {who}", param=name
        )


def refuse_choices_and_logprobs(sampling: SamplingParams, who: str) -> None:
    """A 400 naming ``n`` (above 1), ``top_logprobs`` or ``logprobs``, whichever ``sampling``
    asks for first, which ``who`` (a provider, a runtime) cannot give."""
    if sampling.n != 1:
        raise BadRequest(f"{who} generates one choice per request: n must be 1", param="n")
    if sampling.top_logprobs is not None:
        raise BadRequest(f"{who} returns no log probabilities", param="top_logprobs")
    if sampling.logprobs:
        raise BadRequest(f"{who} returns no log probabilities", param="logprobs")


class Priority(enum.IntEnum):
    """Queue priority of a request. A higher value is served first."""

    BACKGROUND = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


# --------------------------------------------------------------------------- requests

# The prompt-size estimate. The rate limiter reserves this many tokens at admission and
# settles against the real count afterwards, so it must be cheap and deterministic, not
# exact. UTF-8 bytes rather than characters: 4 bytes is about a token in English, and a
# CJK character (3 bytes) is closer to one token than to a quarter of one.
_BYTES_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
"""Role and delimiter tokens each message costs in a chat template."""
_TOKENS_REPLY_PRIMING = 3
"""The assistant header every reply is primed with."""
_TOKENS_PER_TOOL = 8
_TOKENS_PER_IMAGE = 765
"""OpenAI's count for a 1024x1024 image at high detail: a middle-of-the-road guess."""
_TOKENS_PER_LOW_DETAIL_IMAGE = 85
"""OpenAI's fixed count for any image at low detail."""
_TOKENS_PER_DOCUMENT = 1500
"""A PDF page, as Anthropic counts one (text and image of the page): the least a document
costs, and what one given by URL is taken to cost."""
_DOCUMENT_BYTES_PER_TOKEN = 16
"""Base64 characters of an inline PDF per token: a guess between a text PDF's and a
scanned one's, checked against the provider's count when usage settles."""


def _text_tokens(text: str | None) -> int:
    if not text:
        return 0
    return -(-len(text.encode("utf-8")) // _BYTES_PER_TOKEN)


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def _json_tokens(value: Mapping[str, Any]) -> int:
    return _text_tokens(json.dumps(value, separators=(",", ":"), default=_json_default))


def _message_tokens(message: ChatMessage) -> int:
    tokens = _TOKENS_PER_MESSAGE + _text_tokens(message.name)
    tokens += _text_tokens(message.tool_call_id)
    for part in message.parts:
        if isinstance(part, TextPart):
            tokens += _text_tokens(part.text)
        elif isinstance(part, DocumentPart):
            inline = len(part.url) // _DOCUMENT_BYTES_PER_TOKEN if part.is_data_url else 0
            tokens += max(_TOKENS_PER_DOCUMENT, inline)
        elif part.detail == "low":
            tokens += _TOKENS_PER_LOW_DETAIL_IMAGE
        else:
            tokens += _TOKENS_PER_IMAGE
    for call in message.tool_calls:
        tokens += _text_tokens(call.id) + _text_tokens(call.name) + _text_tokens(call.arguments)
    for block in message.reasoning:
        tokens += _text_tokens(block.text)
    return tokens


def _check_user(user: str | None) -> None:
    if user is not None and len(user) > MAX_USER_LENGTH:
        raise BadRequest(f"user is at most {MAX_USER_LENGTH} characters", param="user")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """A chat completion request, provider-neutral and validated.

    ``model`` is the name the client asked for (a deployment or an alias). ``stream``
    asks for token chunks; ``include_usage`` is OpenAI's ``stream_options.include_usage``
    (a non-streaming answer always carries usage). ``metadata`` is passed to providers
    that take it and is treated as read-only.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    """Whether the model may call several tools in one answer (None: the provider's default,
    which is yes). OpenAI's ``parallel_tool_calls``; Anthropic's
    ``tool_choice.disable_parallel_tool_use`` is its negation."""
    response_format: ResponseFormat | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    openai_options: Mapping[str, Any] = field(default_factory=dict)
    """OpenAI parameters the gateway does not interpret (``store``, ``service_tier``,
    ``prediction``), validated at the edge and forwarded as they are to OpenAI-format
    upstreams; a deployment of another format refuses a request that sets one, naming it
    (:func:`refuse_openai_options`)."""
    priority: Priority = Priority.NORMAL
    request_id: str = field(default_factory=new_request_id)

    def __post_init__(self) -> None:
        if not self.model:
            raise BadRequest("model must not be empty", param="model")
        if not self.messages:
            raise BadRequest("messages must hold at least one message", param="messages")
        if len(self.tools) > MAX_TOOLS:
            raise BadRequest(f"at most {MAX_TOOLS} tools are allowed", param="tools")
        _check_user(self.user)
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise BadRequest("tool names must be unique", param="tools")
        choice = self.tool_choice
        if choice is not None and choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.NAMED):
            if not self.tools:
                raise BadRequest(
                    f"tool_choice {choice.mode.value} needs tools", param="tool_choice"
                )
            if choice.name is not None and choice.name not in names:
                raise BadRequest(
                    f"tool_choice names {choice.name!r}, which is not among the tools",
                    param="tool_choice",
                )
        # A tool result must answer a call made earlier in the conversation: OpenAI and
        # Anthropic both reject an orphan, and failing here saves an upstream round trip.
        called: set[str] = set()
        for index, message in enumerate(self.messages):
            called.update(call.id for call in message.tool_calls)
            if message.tool_call_id is not None and message.tool_call_id not in called:
                raise BadRequest(
                    f"tool message answers unknown tool call {message.tool_call_id!r}",
                    param=f"messages[{index}].tool_call_id",
                )

    def estimated_prompt_tokens(self) -> int:
        """A cheap, deterministic estimate of the prompt's size in tokens.

        About one token per 4 UTF-8 bytes of text (message text, names, tool-call
        arguments, tool schemas, the response schema), plus 4 tokens per message and 3 for
        the reply header, plus a fixed cost per image (85 at low detail, 765 otherwise).
        Never below 1. The rate limiter reserves this at admission and settles against
        the provider's real count when the request ends.
        """
        tokens = _TOKENS_REPLY_PRIMING
        for message in self.messages:
            tokens += _message_tokens(message)
        for tool in self.tools:
            tokens += _TOKENS_PER_TOOL + _text_tokens(tool.name)
            tokens += _text_tokens(tool.description) + _json_tokens(tool.parameters)
        if self.response_format is not None and self.response_format.json_schema is not None:
            tokens += _json_tokens(self.response_format.json_schema)
        return tokens

    def max_output_tokens(self, default: int) -> int:
        """The request's cap on generated tokens, or ``default`` when it sets none."""
        if self.sampling.max_tokens is not None:
            return self.sampling.max_tokens
        return default

    def reserved_output_tokens(self, default: int) -> int:
        """The most tokens the request may generate in all: the cap of each choice
        (:meth:`max_output_tokens`) times ``n``. What the rate limiter and the budget hold
        for its output until the real count settles."""
        return self.max_output_tokens(default) * self.sampling.n


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingRequest:
    """An embeddings request: one vector per input — a string each, or (OpenAI's token-id
    form, which LangChain sends by default) a list of token ids each, never both."""

    model: str
    inputs: tuple[str, ...] = ()
    token_ids: tuple[tuple[int, ...], ...] = ()
    """Inputs already tokenized (for the upstream's own tokenizer); ``inputs`` is empty."""
    dimensions: int | None = None
    """Truncate vectors to this size, where the model supports it."""
    user: str | None = None
    request_id: str = field(default_factory=new_request_id)

    def __post_init__(self) -> None:
        if not self.model:
            raise BadRequest("model must not be empty", param="model")
        if not self.inputs and not self.token_ids:
            raise BadRequest("input must hold at least one string", param="input")
        if self.inputs and self.token_ids:
            raise BadRequest("input holds strings or token ids, not both", param="input")
        if any(not ids for ids in self.token_ids):
            raise BadRequest("a token-id input must not be empty", param="input")
        if self.dimensions is not None and not 1 <= self.dimensions <= MAX_EMBEDDING_DIMENSIONS:
            raise BadRequest(
                f"dimensions must be at least 1 and at most {MAX_EMBEDDING_DIMENSIONS}",
                param="dimensions",
            )
        _check_user(self.user)

    @property
    def count(self) -> int:
        """How many inputs (and so vectors)."""
        return len(self.inputs) or len(self.token_ids)

    def texts(self, who: str) -> tuple[str, ...]:
        """The inputs as strings, for a model that tokenizes itself; a token-id request is
        refused with a 400 naming ``input``, ``who`` being what cannot take it."""
        if self.token_ids:
            raise BadRequest(
                f"{who} takes text input only, not token ids: send strings", param="input"
            )
        return self.inputs

    def estimated_prompt_tokens(self) -> int:
        """About one token per 4 UTF-8 bytes, at least one per input (see ChatRequest);
        token-id inputs count their ids."""
        if self.token_ids:
            return sum(len(ids) for ids in self.token_ids)
        return sum(max(1, _text_tokens(text)) for text in self.inputs)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingResult:
    """The vectors, in input order, and the usage they cost (input tokens only)."""

    vectors: tuple[tuple[float, ...], ...]
    usage: Usage
