"""Several choices and log probabilities in the core: the sampling parameters that ask for
them, the output a request may reserve, and the aggregation of interleaved choices."""

from __future__ import annotations

from typing import Any

import pytest

from rakka_inference.core.errors import BadRequest, ProtocolError
from rakka_inference.core.messages import (
    MAX_CHOICES,
    ChatMessage,
    ChatRequest,
    SamplingParams,
    refuse_choices_and_logprobs,
)
from rakka_inference.core.stream import (
    ChatCompletion,
    Choice,
    ChunkAggregator,
    FinishReason,
    TokenChunk,
    TokenLogprob,
    ToolCallDelta,
    aggregate,
)
from rakka_inference.core.tools import ToolCall
from rakka_inference.core.usage import Usage


def test_choices_and_logprobs_within_openais_bounds() -> None:
    sampling = SamplingParams(n=MAX_CHOICES, logprobs=True, top_logprobs=20)
    assert (sampling.n, sampling.logprobs, sampling.top_logprobs) == (128, True, 20)
    assert SamplingParams(logprobs=True, top_logprobs=0).top_logprobs == 0


@pytest.mark.parametrize(
    ("kwargs", "param", "message"),
    [
        ({"n": 129}, "n", "at most 128"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "between 0 and 20"),
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs"),
    ],
)
def test_out_of_bounds(kwargs: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as caught:
        SamplingParams(**kwargs)
    assert caught.value.param == param


def test_the_output_reserved_is_the_cap_of_every_choice() -> None:
    def request(**sampling: Any) -> ChatRequest:
        return ChatRequest(
            model="m", messages=(ChatMessage.user("hi"),), sampling=SamplingParams(**sampling)
        )

    assert request(n=3, max_tokens=100).reserved_output_tokens(4096) == 300
    assert request(n=2).reserved_output_tokens(4096) == 8192
    assert request().reserved_output_tokens(4096) == 4096
    assert request(n=3, max_tokens=100).max_output_tokens(4096) == 100  # per choice


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2, "logprobs": True}, "n"),
        ({"logprobs": True, "top_logprobs": 0}, "top_logprobs"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_a_target_without_them_names_what_it_refuses(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest, match=r"^the runner ") as caught:
        refuse_choices_and_logprobs(SamplingParams(**kwargs), "the runner")
    assert caught.value.param == param
    refuse_choices_and_logprobs(SamplingParams(), "the runner")


def record(token: str, logprob: float) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=logprob, bytes=tuple(token.encode()))


def test_interleaved_choices_fold_apart_and_usage_is_the_requests() -> None:
    chunks = [
        TokenChunk(text="A", logprobs=(record("A", -0.5),)),
        TokenChunk(text="x", choice=2, usage=Usage(input_tokens=5)),
        TokenChunk(reasoning="hm", choice=1),
        TokenChunk(text="B", logprobs=(record("B", -1.0),)),
        TokenChunk(choice=2, tool_calls=(ToolCallDelta(index=0, id="c", name="f"),)),
        TokenChunk(finish_reason=FinishReason.STOP, usage=Usage(output_tokens=3)),
        TokenChunk(text="y", choice=1, logprobs=(record("y", -2.0),)),
        TokenChunk(choice=2, tool_calls=(ToolCallDelta(index=0, arguments="{}"),)),
        TokenChunk(finish_reason=FinishReason.TOOL_CALLS, choice=2),
        TokenChunk(finish_reason=FinishReason.LENGTH, choice=1, usage=Usage(output_tokens=4)),
    ]
    completion = aggregate(chunks)
    assert (completion.text, completion.finish_reason) == ("AB", FinishReason.STOP)
    assert completion.logprobs == (record("A", -0.5), record("B", -1.0))
    assert completion.usage == Usage(input_tokens=5, output_tokens=7)
    assert completion.more_choices == (
        Choice(
            index=1,
            text="y",
            reasoning="hm",
            finish_reason=FinishReason.LENGTH,
            reasoning_blocks=completion.more_choices[0].reasoning_blocks,
            logprobs=(record("y", -2.0),),
        ),
        Choice(
            index=2,
            text="x",
            tool_calls=(ToolCall(id="c", name="f", arguments="{}"),),
            finish_reason=FinishReason.TOOL_CALLS,
        ),
    )
    assert completion.more_choices[0].reasoning_blocks[0].text == "hm"
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert completion.choices[0] == Choice(
        text="AB", finish_reason=FinishReason.STOP, logprobs=completion.logprobs
    )


def test_one_choice_is_what_it_always_was() -> None:
    completion = aggregate([TokenChunk(text="hi", finish_reason=FinishReason.STOP)])
    assert completion == ChatCompletion(text="hi", finish_reason=FinishReason.STOP)
    assert completion.more_choices == ()
    assert completion.choices == (Choice(text="hi", finish_reason=FinishReason.STOP),)


def test_a_tool_call_of_another_choice_without_a_name_is_a_protocol_error() -> None:
    aggregator = ChunkAggregator()
    aggregator.add(TokenChunk(choice=1, tool_calls=(ToolCallDelta(index=0, id="c"),)))
    with pytest.raises(ProtocolError, match="never received a name"):
        aggregator.result()


def test_log_probabilities_alone_are_visible() -> None:
    chunk = TokenChunk(logprobs=(record("\ufffd", -0.1),))
    assert chunk.visible
    assert not chunk.is_empty
    assert not TokenChunk(choice=1).visible
