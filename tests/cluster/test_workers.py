"""Many workers on one node, as real processes: ``rakka serve --config`` with
``[cluster].workers = 4`` in front of the testkit's mock OpenAI, which counts what it gets.

The node's workers share one port, one rate limit per key (the CRDT over Unix datagrams;
strict keys by leases from the parent), their circuits, one admin view and one
``/metrics``; a worker killed with SIGKILL comes back while the others serve; SIGHUP and
the admin API apply a config on every worker or on none.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from serving_support import (
    Child,
    chat,
    chat_calls,
    chat_deployment,
    free_port,
    report,
    start_rakka,
)
from serving_support import admin as admin_client

from rakka_inference.testkit.faults import Fault
from rakka_inference.testkit.mock_openai import OpenAIMock

ADMIN = "admin-test-key"
KEY_ENV = "RAKKA_WORKERS_TEST_KEY"
WORKERS = 4


def config_text(
    port: int,
    endpoint: str,
    *,
    rpm: int,
    strict: bool = False,
    workers: int = WORKERS,
    failure_threshold: int = 100,
) -> str:
    cluster = f"""
[cluster]
bind = "127.0.0.1:{port}"
workers = {workers}
admin_api_key = "{ADMIN}"
"""
    return cluster + chat_deployment(
        endpoint, key_env=KEY_ENV, rpm=rpm, strict=strict, failure_threshold=failure_threshold
    )


@dataclass
class Node:
    child: Child
    port: int
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.child.process

    async def lines_until(self, pattern: str) -> str:
        return await self.child.line(pattern)


async def start_node(config: Path, port: int) -> Node:
    child = await start_rakka(
        "serve", "--config", str(config), "--grace", "5", env={**os.environ, KEY_ENV: "sk-w"}
    )
    node = Node(child, port, config)
    await node.lines_until(r"node serving on .* with \d+ workers")
    return node


async def stop_node(node: Node) -> int:
    return await node.child.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock() as mock:
        yield mock


async def node_for(tmp_path: Path, upstream: OpenAIMock, **settings: Any) -> Node:
    """A node of :data:`WORKERS` workers in front of ``upstream``, started."""
    port = free_port()
    path = tmp_path / "node.toml"
    path.write_text(config_text(port, upstream.openai_base_url, **settings))
    return await start_node(path, port)


def admin(node: Node) -> httpx.AsyncClient:
    return admin_client(node.url, ADMIN)


async def load(node: Node, rounds: int, per_round: int, pause: float) -> list[int]:
    """``per_round`` requests at once, each on its own connection (so they spread over
    the workers), ``rounds`` times; their statuses."""
    statuses: list[int] = []
    for _ in range(rounds):
        statuses += await asyncio.gather(*(chat(node.url) for _ in range(per_round)))
        await asyncio.sleep(pause)
    return statuses


async def test_four_workers_share_one_approximate_limit(
    tmp_path: Path, upstream: OpenAIMock
) -> None:
    rpm = 24
    node = await node_for(tmp_path, upstream, rpm=rpm)
    try:
        # Three times the limit, spread over the workers and over a few sync intervals.
        statuses = await load(node, rounds=6, per_round=rpm * 3 // 6, pause=0.6)
        statuses += await load(node, rounds=3, per_round=rpm * 3 // 6, pause=0.6)
        sent = chat_calls(upstream)
        report(
            f"approximate, {WORKERS} workers, limit {rpm}/min, offered {len(statuses)}:"
            f" the upstream got {sent} (bound {rpm + WORKERS})"
        )
        # The stated bound: at most N requests over the limit in any window.
        assert sent <= rpm + WORKERS, (sent, statuses)
        assert sent >= rpm // 2, (sent, statuses)
        assert statuses.count(200) == sent
        assert set(statuses) <= {200, 429}
        async with admin(node) as client:
            limits = (await client.get("/admin/ratelimits")).json()["data"]
        assert {row["worker"] for row in limits} == {f"w{i}" for i in range(WORKERS)}
        assert all(row["mode"] == "approximate" for row in limits)
    finally:
        assert await stop_node(node) == 0


async def test_strict_limit_is_exact_across_workers(tmp_path: Path, upstream: OpenAIMock) -> None:
    rpm = 20
    node = await node_for(tmp_path, upstream, rpm=rpm, strict=True)
    try:
        statuses = await load(node, rounds=4, per_round=rpm * 3 // 4, pause=0.5)
        report(
            f"strict, {WORKERS} workers, limit {rpm}/min, offered {len(statuses)}:"
            f" the upstream got {chat_calls(upstream)}"
        )
        assert chat_calls(upstream) == rpm
        assert statuses.count(200) == rpm
        assert set(statuses) <= {200, 429}
    finally:
        assert await stop_node(node) == 0


async def test_a_killed_worker_comes_back_and_the_others_serve_throughout(
    tmp_path: Path, upstream: OpenAIMock
) -> None:
    node = await node_for(tmp_path, upstream, rpm=100_000)
    try:
        async with admin(node) as client:
            status = (await client.get("/admin/status")).json()
        workers = {w["worker"]: w for w in status["workers"]}
        assert set(workers) == {f"w{i}" for i in range(WORKERS)}
        assert all(w["state"] == "ready" for w in workers.values())
        victim = workers["w1"]["pid"]
        os.kill(victim, signal.SIGKILL)
        # Load while it is down and coming back: nothing fails.
        statuses = await load(node, rounds=8, per_round=8, pause=0.25)
        assert statuses == [200] * len(statuses)
        await node.lines_until(r"worker w1 .*exited with status -9")
        async with asyncio.timeout(30), admin(node) as client:
            while True:
                status = (await client.get("/admin/status")).json()
                again = {w["worker"]: w for w in status["workers"]}["w1"]
                if again["state"] == "ready":
                    break
                await asyncio.sleep(0.2)
        assert again["pid"] != victim
        assert again["restarts"] == 1
    finally:
        assert await stop_node(node) == 0


async def test_metrics_and_status_answer_for_the_whole_node(
    tmp_path: Path, upstream: OpenAIMock
) -> None:
    node = await node_for(tmp_path, upstream, rpm=100_000)
    try:
        await load(node, rounds=2, per_round=16, pause=0.1)
        async with httpx.AsyncClient(base_url=node.url) as client:
            for _ in range(3):  # whichever worker answers, the same node-wide figures
                text = (await client.get("/metrics")).text
                workers = set(re.findall(r'worker="(w\d+)"', text))
                assert workers == {f"w{i}" for i in range(WORKERS)}
                assert text.count("# TYPE inference_requests_total counter") == 1
                served = re.findall(r'inference_requests_total\{worker="w\d+",[^}]*\} (\d+)', text)
                assert sum(int(n) for n in served) == 32
                sent = re.findall(
                    r'inference_node_sync_datagrams_total\{worker="w\d+",direction="sent"\} (\d+)',
                    text,
                )
                assert len(sent) == WORKERS
        async with admin(node) as client:
            deployments = (await client.get("/admin/deployments")).json()["data"]
            assert [d["name"] for d in deployments] == ["chat"]
            assert len(deployments[0]["replicas"]) == WORKERS
            refused = await client.get("/admin/status", headers={"authorization": "Bearer no"})
            assert refused.status_code == 401
            costs = (await client.get("/admin/costs?window_s=3600")).json()
            assert costs["window_s"] == 3600
            assert sum(row["requests"] for row in costs["data"]) == 32
        status = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from rakka_inference.apps.cli import main; raise SystemExit(main())",
            "status",
            "--url",
            node.url,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "RAKKA_ADMIN_KEY": ADMIN},
        )
        shown = (await status.communicate())[0].decode()
        assert status.returncode == 0, shown
        assert "WORKER  PID" in shown
        assert all(f"w{i}: openai" in shown for i in range(WORKERS)), shown
    finally:
        assert await stop_node(node) == 0


async def test_an_open_circuit_on_one_worker_opens_it_on_all(
    tmp_path: Path, upstream: OpenAIMock
) -> None:
    node = await node_for(tmp_path, upstream, rpm=100_000, failure_threshold=2)
    try:
        for _ in range(2):
            upstream.faults.next(Fault.server_error(503))
        async with httpx.AsyncClient(base_url=node.url) as client:
            # Two failures on one connection (one worker) trip its breaker ...
            for _ in range(2):
                failed = await client.post(
                    "/v1/chat/completions",
                    json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert failed.status_code >= 500
        await asyncio.sleep(0.3)
        async with admin(node) as client:
            circuits = (await client.get("/admin/circuits")).json()["data"]
        # ... and every worker's breaker is open: no worker sends to the dead upstream.
        assert {c["worker"] for c in circuits if c["state"] == "open"} == {
            f"w{i}" for i in range(WORKERS)
        }
        before = chat_calls(upstream)
        statuses = await load(node, rounds=1, per_round=12, pause=0)
        assert chat_calls(upstream) == before
        assert set(statuses) == {503}
        async with admin(node) as client:
            closed = await client.post("/admin/deployments/chat/circuit", json={"state": "closed"})
            assert closed.status_code == 200
            circuits = (await client.get("/admin/circuits")).json()["data"]
        assert {c["state"] for c in circuits} == {"closed"}
    finally:
        assert await stop_node(node) == 0


async def test_a_reload_applies_on_every_worker_or_on_none(
    tmp_path: Path, upstream: OpenAIMock
) -> None:
    node = await node_for(tmp_path, upstream, rpm=100_000)
    config, port = node.config, node.port
    try:
        # A new deployment through the file and SIGHUP: every worker serves it.
        config.write_text(
            config.read_text()
            + f"""
[[deployment]]
name = "second"
model = "gpt-4o"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{upstream.openai_base_url}"
api_key = {{ from_env = "{KEY_ENV}" }}
"""
        )
        node.process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30), admin(node) as client:
            while True:  # the parent applies it worker by worker
                deployments = (await client.get("/admin/deployments")).json()["data"]
                if [d["name"] for d in deployments] == ["chat", "second"] and len(
                    deployments[1]["workers"]
                ) == WORKERS:
                    break
                await asyncio.sleep(0.2)
            assert deployments[1]["workers"] == [f"w{i}" for i in range(WORKERS)]
            # A broken config through the admin API: refused whole, nothing changes.
            broken = config.read_text().replace('name = "second"', 'name = ""')
            refused = await client.post("/admin/deployments", content=broken.encode())
            assert refused.status_code == 400
            assert "name" in refused.json()["error"]["message"]
            # One whose secret no worker can read: refused by the workers, rolled back.
            unset = config.read_text().replace(KEY_ENV, "RAKKA_WORKERS_TEST_UNSET")
            refused = await client.post("/admin/deployments", content=unset.encode())
            assert refused.status_code == 400, refused.text
            deployments = (await client.get("/admin/deployments")).json()["data"]
            assert [d["name"] for d in deployments] == ["chat", "second"]
            # And through the admin API: one deployment removed from the whole node.
            applied = await client.post(
                "/admin/deployments",
                content=config_text(port, upstream.openai_base_url, rpm=100_000).encode(),
            )
            assert applied.status_code == 200, applied.text
            assert orjson.loads(applied.content)["applied"]["removed"] == ["second"]
            deployments = (await client.get("/admin/deployments")).json()["data"]
            assert [d["name"] for d in deployments] == ["chat"]
    finally:
        assert await stop_node(node) == 0


async def test_a_retry_after_seen_by_one_worker_blocks_the_key_on_all(
    tmp_path: Path, upstream: OpenAIMock
) -> None:
    node = await node_for(tmp_path, upstream, rpm=100_000)
    try:
        upstream.faults.next(Fault.rate_limit(5.0))
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=node.url) as client:
            first = await client.post(
                "/v1/chat/completions",
                json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
            )
        limited_at = loop.time()
        assert first.status_code == 429
        await asyncio.sleep(1.2)  # one sync interval (1 s) and a margin
        before = chat_calls(upstream)
        statuses = await load(node, rounds=3, per_round=8, pause=0.3)
        assert loop.time() - limited_at < 4.5
        assert chat_calls(upstream) == before  # no worker sent to the blocked key
        assert set(statuses) == {429}
        await asyncio.sleep(max(0.0, limited_at + 5.5 - loop.time()))
        assert await load(node, rounds=1, per_round=8, pause=0) == [200] * 8
    finally:
        assert await stop_node(node) == 0


async def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path, upstream: OpenAIMock) -> None:
    node = await node_for(tmp_path, upstream, rpm=100_000)
    try:
        async with admin(node) as client:
            pids = [w["pid"] for w in (await client.get("/admin/status")).json()["workers"]]
        assert len(pids) == WORKERS
        node.process.kill()  # SIGKILL: the parent cannot tell anyone
        async with asyncio.timeout(15):
            while any(_alive(pid) for pid in pids):
                await asyncio.sleep(0.1)
    finally:
        await node.child.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
