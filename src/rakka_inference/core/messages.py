"""The provider-neutral request: what a client asked for, validated once.

The gateway speaks OpenAI's chat completions API, so these records follow its shape
(roles, content parts, tool calls with JSON-text arguments). The HTTP edge parses JSON into
them; provider adapters translate them to Anthropic's or Gemini's wire format. Nothing here
knows about either end.

What a message holds (text, images, documents, thinking) is
:mod:`rakka_inference.core.content`, and how to sample (:class:`SamplingParams`, the
bounds on every number) :mod:`rakka_inference.core.sampling`; this module re-exports both,
so every core request type is imported from here.

Validation that does not need the wire format lives here and raises
:class:`~rakka_inference.core.errors.BadRequest` with ``param`` naming the offending field,
so every entry point (HTTP, the Python API, tests) rejects the same requests the same way.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rakka_inference.core.content import (
    PDF,
    ContentPart,
    DocumentPart,
    ImageDetail,
    ImagePart,
    ReasoningBlock,
    TextPart,
)
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.sampling import (
    MAX_CHOICES,
    MAX_OUTPUT_TOKENS,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOP_K,
    MAX_TOP_LOGPROBS,
    REASONING_EFFORTS,
    SEED_RANGE,
    THINKING_BUDGETS,
    ResponseFormat,
    SamplingParams,
    refuse_choices_and_logprobs,
)
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
    "PDF",
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

MAX_EMBEDDING_DIMENSIONS = 65536
"""The largest ``dimensions`` an embeddings request may ask for: far above any model's
vector size, low enough that no runner is asked to allocate a vector of millions."""

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
