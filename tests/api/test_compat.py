"""The compatibility table checked cell by cell against the real adapters and runners, and
the README's copy of it checked against the table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from rakka_inference.api.compat import ROWS, TARGETS, Fate, Row, render_markdown
from rakka_inference.api.openai_request import parse_chat_request
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    DocumentPart,
    SamplingParams,
    TextPart,
)
from rakka_inference.core.runtimes import AnthropicConfig, GeminiConfig, LiteLLMConfig, OpenAIConfig
from rakka_inference.core.tools import ToolDefinition
from rakka_inference.local.transformers_runner import refuse_unsupported
from rakka_inference.providers.anthropic import AnthropicAdapter
from rakka_inference.providers.gemini import GeminiAdapter
from rakka_inference.providers.litellm import LiteLLMAdapter
from rakka_inference.providers.openai import OpenAIAdapter

README = Path(__file__).resolve().parents[2] / "README.md"

Body = Callable[[ChatRequest], dict[str, Any]]


def _transformers(request: ChatRequest) -> dict[str, Any]:
    refuse_unsupported(request)
    return {}


AZURE = OpenAIConfig(variant="azure", resource="r", deployment="d", api_version="2024-10-21")
BODIES: dict[str, Body] = {
    "OpenAI": OpenAIAdapter(OpenAIConfig(), "gpt-4o").request_body,
    "Azure OpenAI": OpenAIAdapter(AZURE, "gpt-4o").request_body,
    "Anthropic": AnthropicAdapter(AnthropicConfig(), "claude-sonnet-4-5").request_body,
    "Gemini": GeminiAdapter(GeminiConfig(), "gemini-2.5-flash").request_body,
    "LiteLLM": LiteLLMAdapter(LiteLLMConfig(endpoint="http://127.0.0.1:4000"), "m").request_body,
    "vLLM, SGLang, llama.cpp": OpenAIAdapter(
        OpenAIConfig(endpoint="http://127.0.0.1:8000/v1"), "m", accepts_top_k=True
    ).request_body,
    "transformers": _transformers,
}
TOOL = ToolDefinition(name="f", description="", parameters={"type": "object"})


def _chat(**fields: Any) -> ChatRequest:
    return ChatRequest(**{"model": "m", "messages": (ChatMessage.user("hi"),), **fields})


PDF = "JVBERi0xLjQ="


REQUESTS: dict[str, ChatRequest] = {
    "reasoning_effort": _chat(sampling=SamplingParams(reasoning_effort="low", max_tokens=4096)),
    "parallel_tool_calls = false": _chat(tools=(TOOL,), parallel_tool_calls=False),
    "top_k (Anthropic's)": _chat(sampling=SamplingParams(top_k=5)),
    "store": _chat(openai_options={"store": True}),
    "service_tier": _chat(openai_options={"service_tier": "flex"}),
    "prediction": _chat(openai_options={"prediction": {"type": "content", "content": "x"}}),
    "metadata": _chat(metadata={"team": "search"}),
    "n > 1": _chat(sampling=SamplingParams(n=2)),
    "logprobs = true": _chat(sampling=SamplingParams(logprobs=True)),
    "top_logprobs": _chat(sampling=SamplingParams(logprobs=True, top_logprobs=3)),
    "thinking.budget_tokens (Anthropic's)": _chat(
        sampling=SamplingParams(thinking_budget=3000, max_tokens=8192)
    ),
    "file (a PDF content part)": _chat(
        messages=(ChatMessage.user((TextPart(text="read"), DocumentPart.from_base64(PDF))),)
    ),
}
"""What each row sends, as the core request the chat route makes of it."""

SENT: dict[str, Callable[[dict[str, Any]], object]] = {
    "reasoning_effort": lambda body: body["reasoning_effort"] == "low",
    "parallel_tool_calls = false": lambda body: body["parallel_tool_calls"] is False,
    "top_k (Anthropic's)": lambda body: body["top_k"] == 5,
    "store": lambda body: body["store"] is True,
    "service_tier": lambda body: body["service_tier"] == "flex",
    "prediction": lambda body: body["prediction"]["type"] == "content",
    "metadata": lambda body: body["metadata"]["team"] == "search",
    "n > 1": lambda body: body["n"] == 2,
    "logprobs = true": lambda body: body["logprobs"] is True,
    "top_logprobs": lambda body: body["top_logprobs"] == 3,
    "thinking.budget_tokens (Anthropic's)": (
        lambda body: body["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    ),
    "file (a PDF content part)": lambda body: body["messages"][0]["content"][1]["type"] == "file",
}
TRANSLATED: dict[tuple[str, str], Callable[[dict[str, Any]], object]] = {
    ("reasoning_effort", "Anthropic"): lambda body: body["thinking"]["budget_tokens"] == 2048,
    ("reasoning_effort", "Gemini"): (
        lambda body: body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 2048
    ),
    ("parallel_tool_calls = false", "Anthropic"): (
        lambda body: body["tool_choice"]["disable_parallel_tool_use"] is True
    ),
    ("top_k (Anthropic's)", "Gemini"): lambda body: body["generationConfig"]["topK"] == 5,
    ("n > 1", "Gemini"): lambda body: body["generationConfig"]["candidateCount"] == 2,
    ("logprobs = true", "Gemini"): (
        lambda body: body["generationConfig"]["responseLogprobs"] is True
    ),
    ("top_logprobs", "Gemini"): lambda body: body["generationConfig"]["logprobs"] == 3,
    **{
        ("thinking.budget_tokens (Anthropic's)", target): (
            lambda body: body["reasoning_effort"] == "low"
        )
        for target in ("OpenAI", "Azure OpenAI", "LiteLLM", "vLLM, SGLang, llama.cpp")
    },
    ("thinking.budget_tokens (Anthropic's)", "Gemini"): (
        lambda body: body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 3000
    ),
    ("file (a PDF content part)", "Anthropic"): (
        lambda body: body["messages"][0]["content"][1]["source"]["data"] == PDF
    ),
    ("file (a PDF content part)", "Gemini"): (
        lambda body: body["contents"][0]["parts"][1]["inlineData"]["data"] == PDF
    ),
}
REFUSED_AT_THE_EDGE: dict[str, tuple[dict[str, Any], str]] = {}
"""Rows the chat route itself refuses, before any deployment is chosen."""


REFUSAL_PARAMS = {"file (a PDF content part)": "messages[0].content"}
"""Rows refused by a parameter of another name than the row's first word."""


def _param(row: Row) -> str:
    return REFUSAL_PARAMS.get(row.parameter) or row.parameter.split(" ")[0].split(".")[0]


CELLS = [
    pytest.param(row, target, fate, id=f"{row.parameter}-{target}")
    for row in ROWS
    for target, (fate, _) in zip(TARGETS, row.fates, strict=True)
]


@pytest.mark.parametrize(("row", "target", "fate"), CELLS)
def test_each_cell_is_what_the_code_does(row: Row, target: str, fate: Fate) -> None:
    if row.parameter in REFUSED_AT_THE_EDGE:
        extra, param = REFUSED_AT_THE_EDGE[row.parameter]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
        with pytest.raises(BadRequest) as refused:
            parse_chat_request(orjson.dumps(body), request_id="r")
        assert fate is Fate.REFUSED
        assert refused.value.param == param
        return
    request = REQUESTS[row.parameter]
    build = BODIES[target]
    if fate is Fate.REFUSED:
        with pytest.raises(BadRequest) as refused:
            build(request)
        assert refused.value.param in (_param(row), "tools")
    elif fate is Fate.FORWARDED:
        assert SENT[row.parameter](build(request))
    else:
        assert TRANSLATED[row.parameter, target](build(request))


def test_every_row_is_checked() -> None:
    assert {row.parameter for row in ROWS} == set(REQUESTS) | set(REFUSED_AT_THE_EDGE)
    assert all(len(row.fates) == len(TARGETS) for row in ROWS)


def test_the_readme_shows_the_table() -> None:
    assert render_markdown() in README.read_text(encoding="utf-8")
