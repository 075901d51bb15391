"""``examples/mock-providers.toml`` runs as it is: ``rakka serve --config`` on it, as a real
process with no API key and no network, answers the official OpenAI SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from serve_process import free_port, running

from rakka_inference.apps.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mock-providers.toml"


def test_the_example_validates_secrets_and_all(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["validate", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[:2] == [
        f"{EXAMPLE}: OK",
        "cluster 'mocks' on 127.0.0.1:8080; client keys: none (open); admin key: none "
        "(admin API off); mock providers in process",
    ]


async def test_the_mock_providers_example_answers_the_openai_sdk(tmp_path: Path) -> None:
    port = free_port()
    args = ("serve", "--config", str(EXAMPLE), "--port", str(port), "--grace", "5")
    # From another directory: the example's key file is found beside it.
    async with running(*args, cwd=tmp_path) as rakka:
        await rakka.line(rf"^rakka: serving gpt, claude, gemini, embed on http://127.0.0.1:{port}$")
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
        )
        try:
            answer = await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content == "You said: hi"
            assert answer.usage is not None
            for model in ("gpt", "claude", "gemini"):
                stream = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "hello there"}],
                    stream=True,
                )
                pieces = [
                    chunk.choices[0].delta.content
                    async for chunk in stream
                    if chunk.choices and chunk.choices[0].delta.content
                ]
                assert "".join(pieces) == "You said: hello there", model
                assert len(pieces) > 1, model
            vectors = await client.embeddings.create(model="embed", input=["a", "b"])
            assert len(vectors.data) == 2
            models = {m.id for m in (await client.models.list()).data}
            assert {"gpt", "claude", "gemini", "embed"} <= models
        finally:
            await client.close()
        assert await rakka.stop() == 0
    assert "Traceback" not in "".join(rakka.output)
