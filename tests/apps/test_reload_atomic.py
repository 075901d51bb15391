"""A reload is all or nothing, in a real ``rakka serve`` process: a SIGHUP whose config
cannot start leaves every running deployment serving as it was — its limits, its budget,
its spend — while the new replicas start and after they fail, checked by requests over real
HTTP. The upstreams are the testkit's: the OpenAI mock in this process, and the stand-in
engine server (a real child process of the gateway) for a local deployment that can be
made to fail at start, slowly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_process import Rakka, clean_env, free_port, running

from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock

UPSTREAM = "sk-reload-atomic-upstream-0001"
ADMIN = "rk-reload-atomic-admin-0002"
STAND_IN = [sys.executable, "-m", "rakka_inference.testkit.stand_in_engine", "vllm"]


def config(port: int, mock: OpenAIMock, stand_in: Path, *, rpm: int, budget: float) -> str:
    """``alpha`` on the OpenAI mock (limits and a budget), ``slow`` on the stand-in engine;
    ``budget`` also sets slow's startup timeout, so that slow changes with it."""
    startup_ms = 20_000 + int(budget)
    return f"""
[cluster]
bind = "127.0.0.1:{port}"
admin_api_key = {{ from_env = "RAKKA_TEST_ADMIN_KEY" }}

[[deployment]]
name = "alpha"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{mock.openai_base_url}"
api_key = {{ from_env = "RAKKA_TEST_UPSTREAM_KEY" }}
[deployment.runtime_config.rate_limits]
requests_per_minute = {rpm}
[deployment.runtime_config.retry]
max_retries = 0
[deployment.serving]
on_capacity_exhausted = "reject"
[deployment.budget]
max_spend_per_day = {budget}

[[deployment]]
name = "slow"
model = "org/tiny-chat"
runtime = "vllm"
[deployment.runtime_config]
command = {json.dumps(STAND_IN)}
env = {{ RAKKA_STAND_IN_DIR = "{stand_in}" }}
gpus = 0
health_interval_ms = 100
health_timeout_ms = 2000
startup_timeout_ms = {startup_ms}
stop_grace_ms = 2000
"""


@dataclass
class Gateway:
    rakka: Rakka
    http: httpx.AsyncClient
    file: Path
    stand_in: Path
    port: int
    mock: OpenAIMock

    def write(self, *, rpm: int, budget: float) -> None:
        self.file.write_text(config(self.port, self.mock, self.stand_in, rpm=rpm, budget=budget))

    async def chat(self, model: str) -> httpx.Response:
        return await self.http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hello there"}]},
        )

    async def admin(self, path: str) -> Any:
        answer = await self.http.get(f"/admin/{path}", headers={"authorization": f"Bearer {ADMIN}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def starts(self) -> int:
        record = self.stand_in / "starts.jsonl"
        return len(record.read_text().splitlines()) if record.exists() else 0


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    stand_in = tmp_path / "stand-in"
    stand_in.mkdir()
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={UPSTREAM}), reply=ReplyScript(text="fine thanks")
    ) as mock:
        port = free_port()
        file = tmp_path / "rakka.toml"
        file.write_text(config(port, mock, stand_in, rpm=600, budget=100.0))
        env = clean_env(RAKKA_TEST_ADMIN_KEY=ADMIN, RAKKA_TEST_UPSTREAM_KEY=UPSTREAM)
        async with (
            running("serve", "--config", str(file), env=env) as rakka,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            await rakka.line("rakka: serving")
            yield Gateway(rakka, http, file, stand_in, port, mock)


async def test_a_sighup_whose_replica_fails_to_start_changes_nothing_running(
    gateway: Gateway,
) -> None:
    live = gateway
    assert (await live.chat("alpha")).status_code == 200
    assert (await live.chat("slow")).status_code == 200
    [cost] = [row for row in (await live.admin("costs"))["data"] if row["deployment"] == "alpha"]
    assert cost["spent_usd"] > 0
    assert live.starts() == 1

    # The new file lowers alpha's limit to 2 a minute and doubles its budget, and changes
    # slow, whose new engine loads for a while and then exits: the reload cannot start.
    (live.stand_in / "faults.json").write_text(
        json.dumps({"start_delay_ms": 400, "exit_on_start": 1})
    )
    live.write(rpm=2, budget=200.0)
    live.rakka.process.send_signal(signal.SIGHUP)

    # While slow's new replica starts, alpha (rebuilt first) serves under its old limits:
    # four more requests in the minute pass where the new limit would refuse the third.
    async with asyncio.timeout(30):
        while live.starts() < 2:
            await asyncio.sleep(0.02)
    during = [(await live.chat("alpha")).status_code for _ in range(4)]
    assert during == [200] * 4
    ratelimits = await live.admin("ratelimits")
    assert {row["requests_per_minute"] for row in ratelimits["data"]} == {600}

    await live.rakka.line("reload rejected, the running config stays")
    await live.rakka.line(r"deployment 'slow': did not start, nothing changed: ContextPoisoned")

    # Nothing changed: both serve, alpha with its limits, its budget and its spend.
    after = [(await live.chat("alpha")).status_code for _ in range(2)]
    assert after == [200, 200]
    assert (await live.chat("slow")).status_code == 200
    status = await live.admin("status")
    assert [d["name"] for d in status["deployments"]] == ["alpha", "slow"]
    assert [d["generation"] for d in status["deployments"]] == [1, 1]
    [budget] = [b for b in status["budgets"] if b["deployment"] == "alpha"]
    assert budget["limit_day_usd"] == 100.0
    assert budget["settled_last_day_usd"] == pytest.approx(cost["spent_usd"] * 7)  # 7 settled
    assert {row["requests_per_minute"] for row in status["ratelimits"]} == {600}
    [again] = [row for row in (await live.admin("costs"))["data"] if row["deployment"] == "alpha"]
    assert again["spent_usd"] == pytest.approx(cost["spent_usd"] * 7)
