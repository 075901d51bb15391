from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rakka_inference.core.errors import ProtocolError
from rakka_inference.core.messages import ReasoningBlock
from rakka_inference.core.stream import (
    ChatCompletion,
    ChunkAggregator,
    FinishReason,
    TokenChunk,
    ToolCallDelta,
    aggregate,
    collect,
)
from rakka_inference.core.tools import ToolCall
from rakka_inference.core.usage import Usage


def test_finish_reason_values_are_openais() -> None:
    assert [reason.value for reason in FinishReason] == [
        "stop",
        "length",
        "tool_calls",
        "content_filter",
        "error",
    ]
    assert FinishReason("tool_calls") is FinishReason.TOOL_CALLS


def test_tool_call_delta_index_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="index"):
        ToolCallDelta(index=-1)


class TestTokenChunk:
    def test_default_chunk_is_empty(self) -> None:
        assert TokenChunk().is_empty

    @pytest.mark.parametrize(
        "chunk",
        [
            TokenChunk(text="a"),
            TokenChunk(reasoning="hmm"),
            TokenChunk(tool_calls=(ToolCallDelta(index=0),)),
            TokenChunk(usage=Usage()),
            TokenChunk(finish_reason=FinishReason.STOP),
        ],
    )
    def test_any_field_makes_it_non_empty(self, chunk: TokenChunk) -> None:
        assert not chunk.is_empty


class TestChunkAggregator:
    def test_empty_stream(self) -> None:
        assert aggregate([]) == ChatCompletion()
        assert aggregate([]).usage is None

    def test_text_reasoning_usage_and_finish(self) -> None:
        completion = aggregate(
            [
                TokenChunk(reasoning="Let me "),
                TokenChunk(reasoning="think."),
                TokenChunk(text="Hello", usage=Usage(input_tokens=12)),
                TokenChunk(),
                TokenChunk(text=", world"),
                TokenChunk(finish_reason=FinishReason.STOP),
                TokenChunk(usage=Usage(output_tokens=5, reasoning_tokens=3)),
            ]
        )
        assert completion == ChatCompletion(
            text="Hello, world",
            reasoning="Let me think.",
            finish_reason=FinishReason.STOP,
            usage=Usage(input_tokens=12, output_tokens=5, reasoning_tokens=3),
            reasoning_blocks=(ReasoningBlock(text="Let me think."),),
        )

    def test_signed_and_redacted_thinking_blocks(self) -> None:
        completion = aggregate(
            [
                TokenChunk(reasoning="First "),
                TokenChunk(reasoning="thought."),
                TokenChunk(reasoning_signature="sig-"),
                TokenChunk(reasoning_signature="one"),
                TokenChunk(reasoning_redacted="opaque"),
                TokenChunk(reasoning="Second.", reasoning_signature="sig-two"),
                TokenChunk(reasoning="Third, unsigned."),
                TokenChunk(text="Answer"),
            ]
        )
        assert completion.reasoning == "First thought.Second.Third, unsigned."
        assert completion.reasoning_blocks == (
            ReasoningBlock(text="First thought.", signature="sig-one"),
            ReasoningBlock(redacted="opaque"),
            ReasoningBlock(text="Second.", signature="sig-two"),
            ReasoningBlock(text="Third, unsigned."),
        )
        assert [block.signed for block in completion.reasoning_blocks] == [
            True,
            True,
            True,
            False,
        ]

    def test_signature_or_redaction_alone_is_visible(self) -> None:
        assert TokenChunk(reasoning_signature="s").visible
        assert TokenChunk(reasoning_redacted="r").visible
        assert not TokenChunk(reasoning_signature="s").is_empty

    def test_last_finish_reason_wins(self) -> None:
        completion = aggregate(
            [
                TokenChunk(finish_reason=FinishReason.STOP),
                TokenChunk(finish_reason=FinishReason.LENGTH),
            ]
        )
        assert completion.finish_reason is FinishReason.LENGTH

    def test_parallel_tool_calls_interleaved_by_index(self) -> None:
        # OpenAI streams parallel calls as fragments keyed by index; they may interleave,
        # and the id and name come only on each call's first fragment.
        chunks = [
            TokenChunk(tool_calls=(ToolCallDelta(index=1, id="call_b", name="get_time"),)),
            TokenChunk(tool_calls=(ToolCallDelta(index=0, id="call_a", name="get_weather"),)),
            TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments='{"city":'),)),
            TokenChunk(
                tool_calls=(
                    ToolCallDelta(index=1, arguments='{"tz": "UTC"}'),
                    ToolCallDelta(index=0, arguments=' "Paris"'),
                )
            ),
            TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments="}"),)),
            TokenChunk(finish_reason=FinishReason.TOOL_CALLS),
        ]
        completion = aggregate(chunks)
        assert completion.tool_calls == (
            ToolCall(id="call_a", name="get_weather", arguments='{"city": "Paris"}'),
            ToolCall(id="call_b", name="get_time", arguments='{"tz": "UTC"}'),
        )
        assert completion.finish_reason is FinishReason.TOOL_CALLS
        assert completion.tool_calls[0].parsed_arguments() == {"city": "Paris"}

    def test_first_id_and_name_win(self) -> None:
        completion = aggregate(
            [
                TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments="{"),)),
                TokenChunk(tool_calls=(ToolCallDelta(index=0, id="call_1", name="f"),)),
                TokenChunk(tool_calls=(ToolCallDelta(index=0, id="call_2", name="g"),)),
                TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments="}"),)),
            ]
        )
        assert completion.tool_calls == (ToolCall(id="call_1", name="f", arguments="{}"),)

    def test_call_without_arguments(self) -> None:
        completion = aggregate([TokenChunk(tool_calls=(ToolCallDelta(index=0, id="c", name="f"),))])
        assert completion.tool_calls == (ToolCall(id="c", name="f", arguments=""),)

    @pytest.mark.parametrize(
        ("delta", "missing"),
        [
            (ToolCallDelta(index=3, name="f", arguments="{}"), "an id"),
            (ToolCallDelta(index=3, id="c", arguments="{}"), "a name"),
        ],
    )
    def test_malformed_tool_call_is_a_protocol_error(
        self, delta: ToolCallDelta, missing: str
    ) -> None:
        aggregator = ChunkAggregator()
        aggregator.add(TokenChunk(tool_calls=(delta,)))
        with pytest.raises(ProtocolError, match=f"index 3 never received {missing}"):
            aggregator.result()

    def test_result_can_be_taken_midway(self) -> None:
        aggregator = ChunkAggregator()
        aggregator.add(TokenChunk(text="a"))
        assert aggregator.result().text == "a"
        aggregator.add(TokenChunk(text="b"))
        assert aggregator.result().text == "ab"


async def test_collect_consumes_an_async_stream() -> None:
    async def stream() -> AsyncIterator[TokenChunk]:
        yield TokenChunk(text="hi", usage=Usage(input_tokens=2, output_tokens=1))
        yield TokenChunk(finish_reason=FinishReason.STOP)

    completion = await collect(stream())
    assert completion.text == "hi"
    assert completion.usage == Usage(input_tokens=2, output_tokens=1)


async def test_collect_closes_the_stream_when_interrupted() -> None:
    # An error raised outside the generator (here: folding a malformed chunk) leaves the
    # generator suspended; collect must close it so the runner behind it aborts now.
    closed: list[str] = []

    async def stream() -> AsyncIterator[TokenChunk]:
        try:
            yield TokenChunk(text="a")
            yield None  # type: ignore[misc]
            yield TokenChunk(text="never reached")
        finally:
            closed.append("closed")

    with pytest.raises(AttributeError):
        await collect(stream())
    assert closed == ["closed"]


async def test_collect_accepts_plain_async_iterables() -> None:
    class Chunks:
        def __init__(self) -> None:
            self._items = [TokenChunk(text="x")]

        def __aiter__(self) -> Chunks:
            return self

        async def __anext__(self) -> TokenChunk:
            if not self._items:
                raise StopAsyncIteration
            return self._items.pop()

    assert (await collect(Chunks())).text == "x"
