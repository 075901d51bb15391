"""The standalone mock server: ``python -m rakka_inference.testkit.mock_server``."""

from __future__ import annotations

import asyncio
import signal
import sys

import openai
import pytest

from rakka_inference.testkit.mock_server import MOCKS, main, serve


async def test_standalone_process_serves_the_openai_sdk_and_exits_cleanly() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rakka_inference.testkit.mock_server",
        "--provider",
        "openai",
        "--port",
        "0",
        "--key",
        "sk-standalone-0001",
        "--text",
        "standalone",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert line.startswith("openai mock listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[-1].strip()
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-standalone-0001")
        try:
            answer = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content == "standalone"
            with pytest.raises(openai.AuthenticationError):
                await client.with_options(api_key="sk-wrong-key-9999").chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
                )
        finally:
            await client.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("provider", sorted(MOCKS))
async def test_every_provider_starts_and_stops_in_process(provider: str) -> None:
    urls: list[str] = []
    stop = asyncio.Event()
    task = asyncio.create_task(serve(provider, port=0, ready=urls.append, stop=stop))
    while not urls and not task.done():
        await asyncio.sleep(0.01)
    assert urls[0].startswith("http://127.0.0.1:")
    stop.set()
    await task


def test_cli_rejects_an_unknown_provider(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--provider", "nope"])
    assert "invalid choice" in capsys.readouterr().err
