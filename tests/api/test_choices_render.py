"""Several choices and log probabilities as the dialects render them: OpenAI's chat
completion and chunks carry them; the Messages and Responses dialects, whose requests
cannot ask for more than one choice, show choice 0 only (and still count the usage)."""

from __future__ import annotations

import orjson

from rakka_inference.api.anthropic_response import MessageStreamRenderer
from rakka_inference.api.openai_response import ChunkRenderer, completion_json
from rakka_inference.api.openai_responses_request import parse_responses_request
from rakka_inference.api.openai_responses_stream import ResponseStreamRenderer
from rakka_inference.core.stream import (
    ChatCompletion,
    Choice,
    FinishReason,
    TokenChunk,
    TokenLogprob,
)
from rakka_inference.core.tools import ToolCall
from rakka_inference.core.usage import Usage

RID = "req_0123"
HI = TokenLogprob(
    token="Hi",
    logprob=-0.25,
    bytes=(72, 105),
    top=(
        TokenLogprob(token="Hi", logprob=-0.25, bytes=(72, 105)),
        TokenLogprob(token="Yo", logprob=-1.5),
    ),
)
HI_JSON = {
    "token": "Hi",
    "logprob": -0.25,
    "bytes": [72, 105],
    "top_logprobs": [
        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
        {"token": "Yo", "logprob": -1.5, "bytes": None},
    ],
}


def test_a_completion_lists_every_choice_with_its_logprobs() -> None:
    result = ChatCompletion(
        text="Hi",
        finish_reason=FinishReason.STOP,
        usage=Usage(input_tokens=3, output_tokens=4),
        logprobs=(HI,),
        more_choices=(
            Choice(
                index=1,
                tool_calls=(ToolCall(id="c", name="f", arguments="{}"),),
                finish_reason=FinishReason.TOOL_CALLS,
            ),
        ),
    )
    document = orjson.loads(
        completion_json(result, request_id=RID, model="m", created=1, logprobs=True)
    )
    first, second = document["choices"]
    assert first == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hi"},
        "finish_reason": "stop",
        "logprobs": {"content": [HI_JSON], "refusal": None},
    }
    assert second["index"] == 1
    assert second["message"]["content"] is None
    assert second["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert second["logprobs"] == {"content": [], "refusal": None}
    assert document["usage"]["completion_tokens"] == 4
    plain = orjson.loads(completion_json(result, request_id=RID, model="m", created=1))
    assert [choice["logprobs"] for choice in plain["choices"]] == [None, None]


def events(data: bytes) -> list[dict[str, object]]:
    return [
        orjson.loads(line[len(b"data: ") :])
        for line in data.split(b"\n\n")
        if line.startswith(b"data: {")
    ]


def test_a_stream_opens_every_choice_and_indexes_its_chunks() -> None:
    renderer = ChunkRenderer(RID, "m", 1, include_usage=True, choices=2)
    opening = events(renderer.first())
    assert [(e["choices"][0]["index"], e["choices"][0]["delta"]) for e in opening] == [  # type: ignore[index]
        (0, {"role": "assistant", "content": ""}),
        (1, {"role": "assistant", "content": ""}),
    ]
    [token] = events(renderer.render(TokenChunk(text="Hi", choice=1, logprobs=(HI,))))
    assert token["choices"] == [
        {
            "index": 1,
            "delta": {"content": "Hi"},
            "logprobs": {"content": [HI_JSON], "refusal": None},
            "finish_reason": None,
        }
    ]
    assert token["usage"] is None
    [finish] = events(renderer.render(TokenChunk(finish_reason=FinishReason.LENGTH, choice=1)))
    assert finish["choices"] == [
        {"index": 1, "delta": {}, "logprobs": None, "finish_reason": "length"}
    ]
    # A byte of a character split over tokens: its record comes, with no text yet.
    [alone] = events(renderer.render(TokenChunk(logprobs=(HI,))))
    assert alone["choices"][0]["delta"] == {}  # type: ignore[index]
    # A choice beyond those asked for (an upstream's doing) is still told apart.
    [beyond] = events(renderer.render(TokenChunk(text="!", choice=3)))
    assert beyond["choices"][0]["index"] == 3  # type: ignore[index]
    assert renderer.render(TokenChunk(choice=1)) == b""


def test_the_single_choice_dialects_show_choice_0_and_count_all_usage() -> None:
    other = TokenChunk(
        text="not shown", choice=1, usage=Usage(output_tokens=5), finish_reason=FinishReason.LENGTH
    )
    messages = MessageStreamRenderer(RID, "m")
    messages.first()
    assert messages.render(other) == b""
    assert b'"text":"shown"' in messages.render(TokenChunk(text="shown"))
    call = parse_responses_request(orjson.dumps({"model": "m", "input": "hi"}), request_id=RID)
    responses = ResponseStreamRenderer(call, RID, 1)
    responses.first()
    assert responses.render(other) == b""
    for renderer in (messages, responses):
        assert renderer.usage == Usage(output_tokens=5)
    assert b'"stop_reason":"end_turn"' in messages.final()
    assert b'"status":"completed"' in responses.final()
