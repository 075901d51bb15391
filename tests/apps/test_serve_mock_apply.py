"""``[cluster].mock_providers`` holds for every config a gateway applies, not only the one
it started with: a deployment added through the admin API (``POST /admin/deployments``) or
by a reload of the file (``POST /admin/reload``, what SIGHUP runs too) is answered by the
in-process mocks. Over real HTTP, with every name but loopback refused: a request sent to a
real provider would fail here, not reach it.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rakka_inference.apps.serve import ServeApp
from rakka_inference.core.config import load_config
from rakka_inference.core.runtimes import RemoteRuntimeConfig
from rakka_inference.testkit.serving import serving

ADMIN = "rk-mock-apply-admin-0001"
HEAD = """
[cluster]
mock_providers = {mocks}
admin_api_key = {{ from_env = "RAKKA_TEST_ADMIN_KEY" }}
"""
DEPLOYMENT = """
[[deployment]]
name = "{name}"
model = "{model}"
runtime = "{runtime}"
[deployment.runtime_config]
api_key = {{ from_env = "RAKKA_TEST_PROVIDER_KEY" }}
[deployment.runtime_config.retry]
max_retries = 0
"""
FIRST = ("gpt", "gpt-4o-mini", "openai")


def toml(*deployments: tuple[str, str, str], mocks: bool = True) -> str:
    head = HEAD.format(mocks=str(mocks).lower())
    return head + "".join(
        DEPLOYMENT.format(name=name, model=model, runtime=runtime)
        for name, model, runtime in deployments
    )


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only loopback names resolve: a provider's real host fails at once, offline or not."""
    resolve = socket.getaddrinfo

    def loopback(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost"):
            raise socket.gaierror(socket.EAI_NONAME, f"{host!r} is not loopback")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback)
    monkeypatch.setenv("RAKKA_TEST_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("RAKKA_TEST_PROVIDER_KEY", "sk-any-key-the-mocks-take")


@dataclass
class Live:
    app: ServeApp
    file: Path
    http: httpx.AsyncClient

    async def chat(self, model: str) -> httpx.Response:
        return await self.http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )

    async def admin(self, path: str, body: str = "") -> httpx.Response:
        headers = {"authorization": f"Bearer {ADMIN}"}
        return await self.http.post(f"/admin/{path}", headers=headers, content=body)

    def endpoint(self, name: str) -> str | None:
        assert self.app.topology is not None
        [deployment] = [d for d in self.app.topology.config.deployments if d.name == name]
        assert isinstance(deployment.runtime_config, RemoteRuntimeConfig)
        return deployment.runtime_config.endpoint


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    file = tmp_path / "rakka.toml"
    file.write_text(toml(FIRST))
    app = ServeApp(load_config(file), bind="127.0.0.1:1", config_file=str(file))
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        yield Live(app, file, http)


def said(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    content: str = answer.json()["choices"][0]["message"]["content"]
    return content


async def test_a_deployment_added_through_the_admin_api_is_answered_by_the_mocks(
    live: Live,
) -> None:
    assert said(await live.chat("gpt")) == "You said: hi"
    body = toml(FIRST, ("late", "gpt-4o", "openai"), ("claude", "claude-haiku-4-5", "anthropic"))

    applied = await live.admin("deployments", body)

    assert applied.status_code == 200, applied.text
    assert applied.json()["applied"]["added"] == ["late", "claude"]
    assert said(await live.chat("late")) == "You said: hi"
    assert said(await live.chat("claude")) == "You said: hi"
    mocks = live.app._sandbox
    assert mocks is not None
    assert mocks.openai.requests[-1].json()["model"] == "gpt-4o"
    assert mocks.anthropic.requests[-1].json()["model"] == "claude-haiku-4-5"
    assert live.endpoint("late") == mocks.openai.openai_base_url


async def test_a_reload_of_the_file_is_answered_by_the_mocks(live: Live) -> None:
    live.file.write_text(toml(FIRST, ("gemini", "gemini-2.5-flash", "gemini")))

    reloaded = await live.admin("reload")

    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["applied"]["added"] == ["gemini"]
    assert said(await live.chat("gemini")) == "You said: hi"


async def test_a_config_that_does_not_ask_for_the_mocks_goes_to_its_provider(
    live: Live,
) -> None:
    applied = await live.admin("deployments", toml(FIRST, mocks=False))

    assert applied.status_code == 200, applied.text
    assert live.endpoint("gpt") is None  # the provider's own endpoint, as the file says
    failed = await live.chat("gpt")
    assert failed.status_code >= 500  # its real host is not reached from here
