"""Who may call a gateway follows its config file's ``[cluster]`` keys, re-read on every
reload — in a real ``rakka serve`` process, one or a node of two workers, over real HTTP
with the OpenAI mock as the upstream:

- a rotated client-key file and admin-key file take effect at SIGHUP: the revoked key gets
  401, the new one 200, on every worker;
- a key file that cannot be read refuses the whole reload: the old keys stay;
- a reload whose deployments cannot start (``alpha`` dropped for ``beta``, whose secret is
  not set) changes nothing: ``alpha`` answers, and the admin API's apply of the same config
  is a typed JSON 400 naming the field;
- a config posted to ``POST /admin/deployments`` changes the deployments, not the keys —
  not even in a worker started again after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serve_process import Rakka, clean_env, free_port, running

from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock

UPSTREAM = "sk-reload-keys-upstream-0001"
CLIENT_OLD, CLIENT_NEW = "rk-client-old-0002", "rk-client-new-0003"
ADMIN_OLD, ADMIN_NEW = "rk-admin-old-0004", "rk-admin-new-0005"
TRIES = 8
"""Requests per check: on a node, enough for the kernel to hand some to each worker."""


def config(port: int, workers: int, keys: Path, mock: OpenAIMock, *names: str) -> str:
    text = f"""
[cluster]
bind = "127.0.0.1:{port}"
workers = {workers}
client_api_keys = [{{ from_file = "{keys / "client.key"}" }}]
admin_api_key = {{ from_file = "{keys / "admin.key"}" }}
"""
    return text + "".join(deployment(name, mock) for name in names)


def deployment(name: str, mock: OpenAIMock) -> str:
    # beta's upstream key is in a variable the gateway does not have.
    variable = "RAKKA_TEST_UNSET_VAR" if name == "beta" else "RAKKA_TEST_UPSTREAM_KEY"
    return f"""
[[deployment]]
name = "{name}"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{mock.openai_base_url}"
api_key = {{ from_env = "{variable}" }}
[deployment.runtime_config.retry]
max_retries = 0
"""


@dataclass
class Node:
    rakka: Rakka
    http: httpx.AsyncClient
    file: Path
    keys: Path
    port: int
    workers: int
    mock: OpenAIMock

    def write(self, *names: str) -> None:
        self.file.write_text(config(self.port, self.workers, self.keys, self.mock, *names))

    def key(self, which: str, value: str) -> None:
        (self.keys / f"{which}.key").write_text(value + "\n")

    async def chats(self, key: str | None, model: str = "alpha") -> set[int]:
        """The statuses of :data:`TRIES` chat requests with ``key``, each on a connection
        of its own (so that a node's workers each take some)."""
        headers = {} if key is None else {"authorization": f"Bearer {key}"}
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        statuses = set()
        for _ in range(TRIES):
            async with httpx.AsyncClient(base_url=self.http.base_url, timeout=30) as fresh:
                answer = await fresh.post("/v1/chat/completions", headers=headers, json=body)
            statuses.add(answer.status_code)
        return statuses

    async def admin(self, method: str, path: str, key: str, body: str = "") -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        return await self.http.request(method, f"/admin/{path}", headers=headers, content=body)

    async def sighup_rejected(self, naming: str) -> str:
        """SIGHUP; the log from the line that says the reload was rejected to the one
        that names ``naming`` (the cause)."""
        before = len(self.rakka.output)
        self.rakka.process.send_signal(signal.SIGHUP)
        await said_after(self.rakka, before, "reload rejected, the running config stays")
        await said_after(self.rakka, before, naming)
        return "".join(self.rakka.output[before:])

    async def until(self, key: str, statuses: set[int], model: str = "alpha") -> None:
        """Ask with ``key`` until every request gets one of ``statuses`` (a reload that
        applies logs nothing at the default level: its effect is the sign)."""
        async with asyncio.timeout(60):
            while await self.chats(key, model) - statuses:
                await asyncio.sleep(0.1)


async def said_after(rakka: Rakka, before: int, text: str) -> str:
    """The first line from ``before`` on that holds ``text``, reading on as need be."""
    assert rakka.process.stdout is not None
    async with asyncio.timeout(60):
        while True:
            for line in rakka.output[before:]:
                if text in line:
                    return line
            raw = await rakka.process.stdout.readline()
            assert raw, "rakka exited:\n" + "".join(rakka.output)
            rakka.output.append(raw.decode(errors="replace"))


@pytest.fixture(params=[1, 2], ids=["process", "node"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={UPSTREAM}), reply=ReplyScript(text="fine thanks")
    ) as mock:
        port = free_port()
        file = tmp_path / "rakka.toml"
        live_node = Node(None, None, file, keys, port, request.param, mock)  # type: ignore[arg-type]
        live_node.key("client", CLIENT_OLD)
        live_node.key("admin", ADMIN_OLD)
        live_node.write("alpha")
        env = clean_env(RAKKA_TEST_UPSTREAM_KEY=UPSTREAM)
        async with (
            running("serve", "--config", str(file), env=env) as rakka,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            await rakka.line(r"serving .*on http://")
            live_node.rakka, live_node.http = rakka, http
            yield live_node


async def test_rotated_key_files_take_effect_at_sighup(node: Node) -> None:
    assert await node.chats(CLIENT_OLD) == {200}
    assert await node.chats(CLIENT_NEW) == {401}
    assert await node.chats(None) == {401}
    node.key("client", CLIENT_NEW)
    node.key("admin", ADMIN_NEW)

    node.rakka.process.send_signal(signal.SIGHUP)

    await node.until(CLIENT_NEW, {200})
    assert await node.chats(CLIENT_OLD) == {401}  # revoked, on every worker
    assert await node.chats(None) == {401}
    assert (await node.admin("GET", "status", ADMIN_OLD)).status_code == 401
    assert (await node.admin("GET", "status", ADMIN_NEW)).status_code == 200


async def test_a_key_file_that_cannot_be_read_refuses_the_reload(node: Node) -> None:
    node.key("admin", ADMIN_NEW)  # readable, but the client key file is gone
    (node.keys / "client.key").unlink()

    said = await node.sighup_rejected("client.key")

    assert "cannot be read" in said
    assert await node.chats(CLIENT_OLD) == {200}
    assert (await node.admin("GET", "status", ADMIN_OLD)).status_code == 200
    assert (await node.admin("GET", "status", ADMIN_NEW)).status_code == 401


async def test_a_reload_whose_deployment_cannot_start_changes_nothing(node: Node) -> None:
    node.write("beta")  # alpha dropped for beta, whose upstream key is not set

    said = await node.sighup_rejected("deployment 'beta'.runtime_config.api_key")

    assert "RAKKA_TEST_UNSET_VAR" in said
    assert await node.chats(CLIENT_OLD) == {200}  # not 404: alpha never left
    for refused in (
        await node.admin("POST", "deployments", ADMIN_OLD, node.file.read_text()),
        await node.admin("POST", "reload", ADMIN_OLD),
    ):
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"].startswith("application/json")
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "deployment 'beta'.runtime_config.api_key"
        assert "nothing changed" in error["message"]
        assert "deployment 'beta'.runtime_config.api_key" in error["message"]
        assert "RAKKA_TEST_UNSET_VAR" in error["message"]
    assert await node.chats(CLIENT_OLD) == {200}
    status = (await node.admin("GET", "deployments", ADMIN_OLD)).json()
    assert {d["name"] for d in status["data"]} == {"alpha"}


async def test_a_posted_config_changes_the_deployments_not_the_keys(node: Node) -> None:
    # No [cluster] keys at all: were they taken, the gateway would be open and the admin
    # API closed.
    posted = deployment("alpha", node.mock) + deployment("gamma", node.mock)
    applied = await node.admin("POST", "deployments", ADMIN_OLD, posted)
    assert applied.status_code == 200, applied.text

    assert await node.chats(CLIENT_OLD, "gamma") == {200}
    assert await node.chats(None, "gamma") == {401}
    assert (await node.admin("GET", "status", ADMIN_OLD)).status_code == 200
    if node.workers == 1:
        return
    # A worker started again runs the posted deployments, with the file's keys.
    workers = (await node.admin("GET", "status", ADMIN_OLD)).json()["workers"]
    first = workers[0]
    os.kill(first["pid"], signal.SIGKILL)
    async with asyncio.timeout(60):
        while True:
            await asyncio.sleep(0.2)
            answer = await node.admin("GET", "status", ADMIN_OLD)
            if answer.status_code != 200:
                continue
            again = answer.json()["workers"][0]
            if again["pid"] != first["pid"] and again["state"] == "ready":
                break
    assert await node.chats(None, "gamma") == {401}
    assert await node.chats(CLIENT_OLD, "gamma") == {200}
    assert (await node.admin("GET", "status", ADMIN_OLD)).status_code == 200


# One process: its requests are ordered (a node's workers swap in turn).
@pytest.mark.parametrize("node", [1], indirect=True, ids=["process"])
async def test_each_request_sees_the_old_keys_or_the_new_never_none(node: Node) -> None:
    node.key("client", CLIENT_NEW)
    seen: list[tuple[str, int]] = []
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}

    async def ask(key: str) -> None:
        headers = {"authorization": f"Bearer {key}"}
        answer = await node.http.post("/v1/chat/completions", headers=headers, json=body)
        seen.append((key, answer.status_code))

    await ask(CLIENT_OLD)
    node.rakka.process.send_signal(signal.SIGHUP)
    async with asyncio.timeout(60):
        while seen[-2:] != [(CLIENT_OLD, 401), (CLIENT_NEW, 200)]:
            await ask(CLIENT_OLD)
            await ask(CLIENT_NEW)

    assert {status for _key, status in seen} == {200, 401}
    old = [status for key, status in seen if key == CLIENT_OLD]
    new = [status for key, status in seen if key == CLIENT_NEW]
    # Each key changes once: the old accepted until the swap, the new from then on ...
    assert old == sorted(old)
    assert new == sorted(new, reverse=True)
    # ... in one step: no request in between found neither accepted.
    swapped = next(i for i, (key, status) in enumerate(seen) if key == CLIENT_OLD and status == 401)
    assert all(status == 200 for key, status in seen[swapped:] if key == CLIENT_NEW)
    assert all(status == 200 for key, status in seen[:swapped] if key == CLIENT_OLD)
