from __future__ import annotations

import base64
import dataclasses
import math
import re
from typing import Any

import pytest

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    DocumentPart,
    EmbeddingRequest,
    EmbeddingResult,
    ImagePart,
    Priority,
    ReasoningBlock,
    ResponseFormat,
    Role,
    SamplingParams,
    TextPart,
    new_request_id,
)
from rakka_inference.core.tools import ToolCall, ToolChoice, ToolChoiceMode, ToolDefinition
from rakka_inference.core.usage import Usage

PNG_BYTES = b"\x89PNG\r\n\x1a\nfake"
PNG_B64 = base64.b64encode(PNG_BYTES).decode()


def request(*messages: ChatMessage, **kwargs: Any) -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=messages or (ChatMessage.user("hi"),), **kwargs)


# --------------------------------------------------------------------------- images


class TestImagePart:
    def test_from_base64_round_trips(self) -> None:
        image = ImagePart.from_base64("image/png", PNG_B64, detail="low")
        assert image.url == f"data:image/png;base64,{PNG_B64}"
        assert image.detail == "low"
        assert image.is_data_url
        assert image.parse_data_url() == ("image/png", PNG_B64)
        assert image.decode_data() == ("image/png", PNG_BYTES)

    def test_https_url_is_not_a_data_url(self) -> None:
        image = ImagePart(url="https://example.com/cat.png")
        assert not image.is_data_url
        with pytest.raises(BadRequest, match="not a data: URL") as caught:
            image.parse_data_url(param="messages[0].content[1].image_url")
        assert caught.value.param == "messages[0].content[1].image_url"

    def test_media_type_parameters_and_case(self) -> None:
        image = ImagePart(url=f"DATA:Image/JPEG;name=x.jpg;BASE64,{PNG_B64}")
        assert image.parse_data_url() == ("image/jpeg", PNG_B64)

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("data:image/png;base64", "no ','"),
            (f"data:image/png,{PNG_B64}", "base64-encoded"),
            (f"data:;base64,{PNG_B64}", "media type"),
            (f"data:png;base64,{PNG_B64}", "media type"),
            ("data:image/png;base64,", "valid base64"),
            ("data:image/png;base64,abc", "valid base64"),
            ("data:image/png;base64,ab$d", "valid base64"),
            ("data:image/png;base64,a===", "valid base64"),
        ],
    )
    def test_malformed_data_urls(self, url: str, message: str) -> None:
        with pytest.raises(BadRequest, match=re.escape(message)) as caught:
            ImagePart(url=url).parse_data_url()
        assert caught.value.param == "messages"
        assert caught.value.http_status == 400


# --------------------------------------------------------------------------- tools


class TestTools:
    def test_parsed_arguments(self) -> None:
        call = ToolCall(id="call_1", name="f", arguments='{"city": "Paris"}')
        assert call.parsed_arguments() == {"city": "Paris"}
        assert ToolCall(id="c", name="f", arguments="  ").parsed_arguments() == {}
        assert ToolCall(id="c", name="f").parsed_arguments() == {}

    @pytest.mark.parametrize(("arguments", "message"), [("{", "not valid JSON"), ("[1]", "object")])
    def test_parsed_arguments_rejects(self, arguments: str, message: str) -> None:
        with pytest.raises(BadRequest, match=message) as caught:
            ToolCall(id="c", name="f", arguments=arguments).parsed_arguments(param="x")
        assert caught.value.param == "x"

    def test_tool_definition_defaults(self) -> None:
        tool = ToolDefinition(name="get_weather")
        assert tool.parameters == {"type": "object", "properties": {}}
        assert tool.description is None
        assert tool.strict is None

    @pytest.mark.parametrize("name", ["", "has space", "x" * 65, "dot.name"])
    def test_tool_definition_rejects_bad_names(self, name: str) -> None:
        with pytest.raises(BadRequest) as caught:
            ToolDefinition(name=name)
        assert caught.value.param == "tools"

    def test_tool_choice_constructors(self) -> None:
        assert ToolChoice.auto().mode is ToolChoiceMode.AUTO
        assert ToolChoice.none().mode is ToolChoiceMode.NONE
        assert ToolChoice.required().mode is ToolChoiceMode.REQUIRED
        named = ToolChoice.named("f")
        assert (named.mode, named.name) == (ToolChoiceMode.NAMED, "f")

    @pytest.mark.parametrize(
        ("mode", "name"), [(ToolChoiceMode.NAMED, None), (ToolChoiceMode.AUTO, "f")]
    )
    def test_tool_choice_name_iff_named(self, mode: ToolChoiceMode, name: str | None) -> None:
        with pytest.raises(BadRequest) as caught:
            ToolChoice(mode=mode, name=name)
        assert caught.value.param == "tool_choice"


# --------------------------------------------------------------------------- messages


class TestChatMessage:
    def test_constructors(self) -> None:
        assert ChatMessage.system("s").role is Role.SYSTEM
        assert ChatMessage.developer("d").role is Role.DEVELOPER
        assert ChatMessage.user("u").role is Role.USER
        assert ChatMessage.assistant("a").role is Role.ASSISTANT
        tool = ChatMessage.tool("call_1", "42")
        assert (tool.role, tool.tool_call_id, tool.text) == (Role.TOOL, "call_1", "42")

    def test_text_joins_text_parts(self) -> None:
        image = ImagePart(url="https://example.com/a.png")
        message = ChatMessage.user((TextPart(text="one"), image, TextPart(text="two")))
        assert message.text == "one\ntwo"
        assert message.images == (image,)
        assert message.parts == message.content

    def test_string_content_views(self) -> None:
        message = ChatMessage.user("hello")
        assert message.text == "hello"
        assert message.parts == (TextPart(text="hello"),)
        assert message.images == ()

    def test_assistant_with_only_tool_calls(self) -> None:
        call = ToolCall(id="call_1", name="f", arguments="{}")
        message = ChatMessage.assistant(tool_calls=(call,))
        assert message.content is None
        assert message.text == ""
        assert message.parts == ()
        assert message.images == ()

    def test_empty_string_content_is_allowed(self) -> None:
        assert ChatMessage.user("").text == ""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"role": Role.TOOL, "content": "x"}, "needs a tool_call_id"),
            ({"role": Role.TOOL, "content": "x", "tool_call_id": ""}, "needs a tool_call_id"),
            ({"role": Role.USER, "content": "x", "tool_call_id": "c"}, "belongs on tool"),
            (
                {"role": Role.USER, "content": "x", "tool_calls": (ToolCall(id="c", name="f"),)},
                "only assistant",
            ),
            ({"role": Role.USER}, "needs content"),
            ({"role": Role.USER, "content": ()}, "needs content"),
            ({"role": Role.ASSISTANT}, "needs content"),
            (
                {
                    "role": Role.SYSTEM,
                    "content": (ImagePart(url="https://example.com/a.png"),),
                },
                "user messages only",
            ),
        ],
    )
    def test_validation(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(BadRequest, match=message) as caught:
            ChatMessage(**kwargs)
        assert caught.value.param == "messages"

    def test_text_parts_allowed_on_system(self) -> None:
        message = ChatMessage(role=Role.SYSTEM, content=(TextPart(text="be brief"),))
        assert message.text == "be brief"


# --------------------------------------------------------------------------- options


class TestResponseFormat:
    def test_constructors(self) -> None:
        assert ResponseFormat.text().type == "text"
        assert ResponseFormat.json_object().type == "json_object"
        schema = {"type": "object"}
        fmt = ResponseFormat.from_schema("answer", schema, strict=True)
        assert (fmt.type, fmt.json_schema, fmt.schema_name, fmt.strict) == (
            "json_schema",
            schema,
            "answer",
            True,
        )

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"type": "json_schema"},
            {"type": "json_schema", "json_schema": {}},
            {"type": "json_schema", "schema_name": "x"},
            {"type": "json_object", "json_schema": {}},
            {"type": "text", "schema_name": "x"},
        ],
    )
    def test_validation(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(BadRequest) as caught:
            ResponseFormat(**kwargs)
        assert caught.value.param == "response_format"


class TestSamplingParams:
    def test_defaults_leave_everything_to_the_provider(self) -> None:
        params = SamplingParams()
        assert params.temperature is None
        assert params.max_tokens is None
        assert params.stop == ()
        assert params.n == 1

    def test_bounds_are_inclusive(self) -> None:
        SamplingParams(
            temperature=2.0,
            top_p=0.0,
            max_tokens=1,
            stop=("a", "b", "c", "d"),
            presence_penalty=-2.0,
            frequency_penalty=2.0,
            seed=7,
            n=3,
        )

    @pytest.mark.parametrize(
        ("kwargs", "param"),
        [
            ({"temperature": -0.1}, "temperature"),
            ({"temperature": 2.01}, "temperature"),
            ({"temperature": math.nan}, "temperature"),
            ({"top_p": 1.5}, "top_p"),
            ({"top_p": -0.01}, "top_p"),
            ({"presence_penalty": 2.5}, "presence_penalty"),
            ({"frequency_penalty": -3.0}, "frequency_penalty"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"stop": ("a", "b", "c", "d", "e")}, "stop"),
            ({"stop": ("",)}, "stop"),
            ({"n": 0}, "n"),
        ],
    )
    def test_out_of_range(self, kwargs: dict[str, Any], param: str) -> None:
        with pytest.raises(BadRequest, match=param) as caught:
            SamplingParams(**kwargs)
        assert caught.value.param == param


def test_priority_order() -> None:
    assert Priority.BACKGROUND < Priority.NORMAL < Priority.HIGH < Priority.CRITICAL


# --------------------------------------------------------------------------- requests


class TestChatRequest:
    def test_defaults(self) -> None:
        req = request()
        assert req.sampling == SamplingParams()
        assert req.tools == ()
        assert req.tool_choice is None
        assert req.stream is False
        assert req.include_usage is False
        assert req.priority is Priority.NORMAL
        assert dict(req.metadata) == {}
        assert re.fullmatch(r"req_[0-9a-f]{32}", req.request_id)

    def test_request_ids_are_unique(self) -> None:
        assert request().request_id != request().request_id
        assert new_request_id() != new_request_id()

    def test_is_immutable(self) -> None:
        req = request()
        with pytest.raises(dataclasses.FrozenInstanceError):
            req.model = "other"  # type: ignore[misc]

    def test_needs_messages_and_model(self) -> None:
        with pytest.raises(BadRequest, match="at least one message") as caught:
            ChatRequest(model="gpt-4o", messages=())
        assert caught.value.param == "messages"
        with pytest.raises(BadRequest) as caught:
            ChatRequest(model="", messages=(ChatMessage.user("hi"),))
        assert caught.value.param == "model"

    def test_tool_names_unique(self) -> None:
        tools = (ToolDefinition(name="f"), ToolDefinition(name="f"))
        with pytest.raises(BadRequest, match="unique") as caught:
            request(tools=tools)
        assert caught.value.param == "tools"

    def test_tool_choice_against_tools(self) -> None:
        tools = (ToolDefinition(name="f"),)
        assert request(tools=tools, tool_choice=ToolChoice.named("f")).tool_choice is not None
        assert request(tool_choice=ToolChoice.none()).tool_choice == ToolChoice.none()
        assert request(tool_choice=ToolChoice.auto()).tools == ()
        with pytest.raises(BadRequest, match="needs tools") as caught:
            request(tool_choice=ToolChoice.required())
        assert caught.value.param == "tool_choice"
        with pytest.raises(BadRequest, match="not among the tools"):
            request(tools=tools, tool_choice=ToolChoice.named("g"))

    def test_tool_results_must_answer_earlier_calls(self) -> None:
        call = ToolCall(id="call_1", name="f", arguments="{}")
        conversation = (
            ChatMessage.user("weather?"),
            ChatMessage.assistant(tool_calls=(call,)),
            ChatMessage.tool("call_1", "sunny"),
        )
        assert len(request(*conversation).messages) == 3
        with pytest.raises(BadRequest, match="unknown tool call") as caught:
            request(ChatMessage.user("hi"), ChatMessage.tool("call_9", "x"))
        assert caught.value.param == "messages[1].tool_call_id"

    def test_max_output_tokens(self) -> None:
        assert request().max_output_tokens(4096) == 4096
        capped = request(sampling=SamplingParams(max_tokens=100))
        assert capped.max_output_tokens(4096) == 100


class TestEstimatedPromptTokens:
    def test_minimal_request_is_never_zero(self) -> None:
        # 3 for the reply header + 4 for the message; empty text adds nothing.
        assert request(ChatMessage.user("")).estimated_prompt_tokens() == 7

    def test_about_four_bytes_per_token(self) -> None:
        base = request(ChatMessage.user("")).estimated_prompt_tokens()
        assert request(ChatMessage.user("abcd" * 100)).estimated_prompt_tokens() == base + 100
        # Rounds up: one extra byte costs a whole token.
        assert request(ChatMessage.user("abcde")).estimated_prompt_tokens() == base + 2

    def test_counts_utf8_bytes(self) -> None:
        base = request(ChatMessage.user("")).estimated_prompt_tokens()
        # Four CJK characters are twelve bytes: three tokens, not one.
        assert request(ChatMessage.user("日本語版")).estimated_prompt_tokens() == base + 3

    def test_is_deterministic(self) -> None:
        req = request(
            ChatMessage.system("be brief"),
            ChatMessage.user("hello there"),
            tools=(ToolDefinition(name="f", description="does f"),),
        )
        assert req.estimated_prompt_tokens() == req.estimated_prompt_tokens()
        assert dataclasses.replace(req).estimated_prompt_tokens() == req.estimated_prompt_tokens()

    def test_images_have_a_fixed_cost(self) -> None:
        base = request(ChatMessage.user("")).estimated_prompt_tokens()
        high = ChatMessage.user((ImagePart.from_base64("image/png", PNG_B64 * 1000),))
        low = ChatMessage.user((ImagePart(url="https://example.com/a.png", detail="low"),))
        assert request(high).estimated_prompt_tokens() == base + 765
        assert request(low).estimated_prompt_tokens() == base + 85

    def test_everything_counts(self) -> None:
        base = request(ChatMessage.user("")).estimated_prompt_tokens()
        call = ToolCall(id="call_1", name="lookup", arguments='{"q": "x"}')
        with_history = request(
            ChatMessage(role=Role.USER, content="", name="alice"),
            ChatMessage.assistant(tool_calls=(call,)),
            ChatMessage.tool("call_1", "result"),
        )
        assert with_history.estimated_prompt_tokens() > base + 8
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        with_tools = request(
            ChatMessage.user(""),
            tools=(ToolDefinition(name="f", description="d", parameters=schema),),
        )
        assert with_tools.estimated_prompt_tokens() > base + 8
        with_format = request(
            ChatMessage.user(""),
            response_format=ResponseFormat.from_schema("s", schema),
        )
        assert with_format.estimated_prompt_tokens() > base
        plain_format = request(ChatMessage.user(""), response_format=ResponseFormat.json_object())
        assert plain_format.estimated_prompt_tokens() == base

    def test_schema_with_unusual_values_still_estimates(self) -> None:
        from types import MappingProxyType

        schema = MappingProxyType({"type": "object", "nested": MappingProxyType({"a": 1})})
        weird = {"type": "object", "default": object()}
        req = request(
            tools=(
                ToolDefinition(name="f", parameters=schema),
                ToolDefinition(name="g", parameters=weird),
            )
        )
        assert req.estimated_prompt_tokens() > 0


class TestEmbeddings:
    def test_request(self) -> None:
        req = EmbeddingRequest(model="text-embedding-3-small", inputs=("a", "abcdefgh"))
        assert req.dimensions is None
        assert req.request_id.startswith("req_")
        assert req.estimated_prompt_tokens() == 1 + 2
        assert EmbeddingRequest(model="m", inputs=("",)).estimated_prompt_tokens() == 1

    @pytest.mark.parametrize(
        ("kwargs", "param"),
        [
            ({"model": "", "inputs": ("a",)}, "model"),
            ({"model": "m", "inputs": ()}, "input"),
            ({"model": "m", "inputs": ("a",), "dimensions": 0}, "dimensions"),
        ],
    )
    def test_validation(self, kwargs: dict[str, Any], param: str) -> None:
        with pytest.raises(BadRequest) as caught:
            EmbeddingRequest(**kwargs)
        assert caught.value.param == param

    def test_result(self) -> None:
        result = EmbeddingResult(vectors=((0.1, 0.2),), usage=Usage(input_tokens=3))
        assert result.usage.total_tokens == 3


# --------------------------------------------------------------------------- thinking


def test_thinking_blocks_belong_to_assistant_turns() -> None:
    signed = ReasoningBlock(text="hmm", signature="sig")
    turn = ChatMessage.assistant(reasoning=(signed, ReasoningBlock(redacted="opaque")))
    assert turn.thought_only
    assert [block.signed for block in turn.reasoning] == [True, True]
    assert not ReasoningBlock(text="unsigned").signed
    assert not ChatMessage.assistant("text", reasoning=(signed,)).thought_only
    with pytest.raises(BadRequest, match="only assistant messages may carry thinking"):
        ChatMessage(role=Role.USER, content="hi", reasoning=(signed,))
    with pytest.raises(BadRequest, match="redacted thinking block carries its data only"):
        ReasoningBlock(text="x", redacted="opaque")
    # The thinking counts toward the prompt estimate.
    assert (
        request(ChatMessage.user("hi"), turn).estimated_prompt_tokens()
        > request(ChatMessage.user("hi")).estimated_prompt_tokens()
    )


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(1024, "minimal"), (2047, "minimal"), (2048, "low"), (8192, "medium"), (99999, "high")],
)
def test_a_thinking_budget_reaches_the_effort_whose_figure_it_reaches(
    budget: int, effort: str
) -> None:
    sampling = SamplingParams(thinking_budget=budget)
    assert sampling.effort == effort
    assert sampling.thinking_tokens == budget
    assert sampling.thinks


def test_an_effort_is_its_budget_and_none_does_not_think() -> None:
    assert SamplingParams(reasoning_effort="medium").thinking_tokens == 8192
    assert SamplingParams(reasoning_effort="none").thinking_tokens == 0
    assert not SamplingParams(reasoning_effort="none").thinks
    assert SamplingParams().thinking_tokens is None
    assert SamplingParams().effort is None
    assert not SamplingParams().thinks


def test_a_budget_is_positive_and_never_beside_an_effort() -> None:
    with pytest.raises(BadRequest, match="between 1 and"):
        SamplingParams(thinking_budget=0)
    with pytest.raises(BadRequest, match="not both"):
        SamplingParams(thinking_budget=2048, reasoning_effort="low")


# --------------------------------------------------------------------------- documents

PDF_B64 = base64.b64encode(b"%PDF-1.4 tiny").decode()


def test_a_document_inline_or_by_url() -> None:
    inline = DocumentPart.from_base64(PDF_B64, filename="a.pdf")
    assert inline.is_data_url
    assert inline.base64_data() == PDF_B64
    by_url = DocumentPart(url="https://x.test/a.pdf")
    assert not by_url.is_data_url
    message = ChatMessage.user((TextPart(text="read"), inline, by_url))
    assert message.documents == (inline, by_url)
    assert ChatMessage.user("plain").documents == ()


def test_a_document_must_be_a_pdf_in_a_user_turn() -> None:
    with pytest.raises(BadRequest, match="must be PDFs") as caught:
        DocumentPart(url="data:text/plain;base64,aGk=").base64_data(param="here")
    assert caught.value.param == "here"
    with pytest.raises(BadRequest, match="not a data: URL"):
        DocumentPart(url="https://x.test/a.pdf").base64_data()
    with pytest.raises(BadRequest, match="user messages only"):
        ChatMessage(role=Role.SYSTEM, content=(DocumentPart.from_base64(PDF_B64),))


def test_a_document_costs_at_least_a_page_in_the_estimate() -> None:
    base = request(ChatMessage.user((TextPart(text="read"),))).estimated_prompt_tokens()
    small = DocumentPart.from_base64(PDF_B64)
    large = DocumentPart.from_base64("A" * 64_000)
    with_small = request(ChatMessage.user((TextPart(text="read"), small)))
    with_large = request(ChatMessage.user((TextPart(text="read"), large)))
    assert with_small.estimated_prompt_tokens() == base + 1500
    assert with_large.estimated_prompt_tokens() > base + 4000
