"""PDF documents end to end, with the official SDKs: OpenAI's ``file`` parts, Anthropic's
``document`` blocks and the Responses API's ``input_file`` parts reach each provider in its
own terms (a ``file`` part, a ``document`` block, ``inlineData``), and what a provider cannot
take is a 400 naming the part."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from mock_gateway import gateway_config, last_body, on_mock

from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

KEY = "sk-documents-upstream-0001"
PDF = base64.b64encode(b"%PDF-1.4 a tiny document").decode()
DATA_URL = f"data:application/pdf;base64,{PDF}"
FILE_PART = {"type": "file", "file": {"filename": "report.pdf", "file_data": DATA_URL}}


@dataclass
class Live:
    gpt: OpenAIMock
    claude: AnthropicMock
    gemini: GeminiMock
    chat: openai.AsyncOpenAI
    messages: anthropic.AsyncAnthropic

    def sent(self, deployment: str) -> dict[str, Any]:
        mock = {"gpt": self.gpt, "claude": self.claude, "gemini": self.gemini}[deployment]
        return last_body(mock)


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    plan = FaultPlan(valid_keys={KEY})
    reply = ReplyScript(text="A short report.")
    async with (
        OpenAIMock(faults=plan, reply=reply) as gpt,
        AnthropicMock(faults=plan, reply=reply) as claude,
        GeminiMock(faults=plan, reply=reply) as gemini,
    ):
        topology = Topology(
            gateway_config(
                on_mock("gpt", gpt, KEY),
                on_mock("claude", claude, KEY, model="claude-sonnet-4-5"),
                on_mock("gemini", gemini, KEY),
            )
        )
        async with serving(topology.gateway) as base:
            chat = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            messages = anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0)
            try:
                yield Live(gpt, claude, gemini, chat, messages)
            finally:
                await chat.close()
                await messages.close()


async def _chat(live: Live, deployment: str) -> None:
    answer = await live.chat.chat.completions.create(
        model=deployment,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "Summarize."}, FILE_PART],  # type: ignore[list-item]
            }
        ],
    )
    assert answer.choices[0].message.content == "A short report."


async def test_a_chat_file_part_reaches_each_provider_in_its_terms(live: Live) -> None:
    await _chat(live, "gpt")
    assert live.sent("gpt")["messages"][0]["content"][1] == FILE_PART
    await _chat(live, "claude")
    assert live.sent("claude")["messages"][0]["content"][1] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        "title": "report.pdf",
    }
    await _chat(live, "gemini")
    parts = live.sent("gemini")["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "application/pdf", "data": PDF}}


async def test_a_messages_document_block_reaches_an_openai_deployment_as_a_file(
    live: Live,
) -> None:
    await live.messages.messages.create(
        model="gpt",
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                        "title": "report.pdf",
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "Notes."},
                    },
                    {"type": "text", "text": "Summarize."},
                ],
            }
        ],
    )
    content = live.sent("gpt")["messages"][0]["content"]
    assert content[0] == FILE_PART
    assert content[1:] == [
        {"type": "text", "text": "Notes."},
        {"type": "text", "text": "Summarize."},
    ]


async def test_a_document_by_url_reaches_claude_and_gemini_but_not_openai(live: Live) -> None:
    url = "https://docs.example/report.pdf"
    block = {"type": "document", "source": {"type": "url", "url": url}}
    question = [{"role": "user", "content": [block, {"type": "text", "text": "Summarize."}]}]
    await live.messages.messages.create(model="claude", max_tokens=64, messages=question)  # type: ignore[arg-type]
    assert live.sent("claude")["messages"][0]["content"][0] == block
    await live.messages.messages.create(model="gemini", max_tokens=64, messages=question)  # type: ignore[arg-type]
    part = live.sent("gemini")["contents"][0]["parts"][0]
    assert part == {"fileData": {"mimeType": "application/pdf", "fileUri": url}}
    sent_before = len(live.gpt.requests)
    with pytest.raises(anthropic.BadRequestError, match="not by URL"):
        await live.messages.messages.create(model="gpt", max_tokens=64, messages=question)  # type: ignore[arg-type]
    assert len(live.gpt.requests) == sent_before


async def test_a_responses_input_file_reaches_claude(live: Live) -> None:
    await live.chat.responses.create(
        model="claude",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_file", "filename": "report.pdf", "file_data": DATA_URL},
                    {"type": "input_text", "text": "Summarize."},
                ],
            }
        ],
    )
    document = live.sent("claude")["messages"][0]["content"][0]
    assert document["source"] == {"type": "base64", "media_type": "application/pdf", "data": PDF}


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[0].file.file_id"),
        ({"type": "file", "file": {}}, "messages[0].content[0].file.file_data"),
        (
            {"type": "file", "file": {"file_data": "data:text/plain;base64,aGk="}},
            "messages[0].content[0].file.file_data",
        ),
        (
            {"type": "file", "file": {"file_data": "not a data url"}},
            "messages[0].content[0].file.file_data",
        ),
    ],
)
async def test_a_file_the_gateway_cannot_send_is_a_400_naming_it(
    live: Live, part: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await live.chat.chat.completions.create(
            model="gpt",
            messages=[{"role": "user", "content": [part]}],  # type: ignore[list-item]
        )
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert live.gpt.requests == []


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_file", "file_id": "file-abc"}, "input[0].content[0].file_id"),
        ({"type": "input_file"}, "input[0].content[0].file_data"),
        ({"type": "input_file", "file_url": "ftp://x/a.pdf"}, "input[0].content[0].file_url"),
    ],
)
async def test_a_responses_file_the_gateway_cannot_send_is_a_400_naming_it(
    live: Live, part: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await live.chat.responses.create(
            model="gpt",
            input=[{"role": "user", "content": [part]}],  # type: ignore[list-item]
        )
    assert caught.value.body["param"] == param  # type: ignore[index]


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ({"type": "base64", "media_type": "text/html", "data": PDF}, "application/pdf"),
        ({"type": "base64", "media_type": "application/pdf", "data": "%%%"}, "valid base64"),
        ({"type": "url", "url": "file:///etc/passwd"}, r"an http\(s\) URL"),
        ({"type": "file", "file_id": "file_1"}, "not supported"),
        ({"type": "content", "content": []}, "not supported"),
        ({"type": "zip"}, "'base64', 'url' or 'text'"),
    ],
)
async def test_a_bad_document_block_is_a_400(
    live: Live, source: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(anthropic.BadRequestError, match=fragment):
        await live.messages.messages.create(
            model="claude",
            max_tokens=64,
            messages=[{"role": "user", "content": [{"type": "document", "source": source}]}],  # type: ignore[list-item]
        )
    assert live.claude.requests == []
