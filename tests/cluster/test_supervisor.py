"""The node's parent, in this process, over stand-in workers: small Python programs that say
``ready`` on the control socket and answer ``/_node/apply`` as told by their environment.

Supervision (a dead worker is started again, a node whose workers never serve does not
start), the all-or-nothing apply (a worker that refuses makes the others go back), the
control socket's answers to bad input, and the stop (SIGTERM, then SIGKILL past the grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from rakka_inference.cluster.supervisor import (
    ConfigSource,
    NodeSupervisor,
    control_path,
    worker_name,
)

# A stand-in worker. FAKE_REFUSE names workers that refuse an apply; FAKE_DIE_AFTER makes a
# worker exit (status 7) that many seconds after it said ready, once (a marker file);
# FAKE_NEVER_READY exits at once; FAKE_IGNORE_TERM ignores SIGTERM; FAKE_EXIT is the
# status on SIGTERM. Every /_node call is appended to <node dir>/<worker>.log.
FAKE_WORKER = r"""
import asyncio, json, os, signal, socket, sys
env = os.environ
name, node = env["RAKKA_WORKER"], env["RAKKA_NODE_DIR"]
listener = socket.socket(fileno=int(env["RAKKA_LISTEN_FD"]))
if env.get("FAKE_NEVER_READY"):
    sys.exit(1)
if env.get("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

async def control(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    target = head.split(b" ")[1].decode()
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length)
    with open(os.path.join(node, name + ".log"), "a") as log:
        log.write(target + "\n")
    if target == "/_node/apply" and name in env.get("FAKE_REFUSE", "").split(","):
        answer = {"ok": False, "status": 400, "message": name + " refuses"}
    elif target == "/_node/apply":
        changed = [json.loads(body)["toml"]]
        answer = {"ok": True, "applied": {"added": [], "changed": changed, "removed": []}}
    else:
        answer = {"ok": True}
    data = json.dumps(answer).encode()
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(data) + data)
    await writer.drain()
    writer.close()

async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if not env.get("FAKE_IGNORE_TERM"):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_unix_server(control, path=os.path.join(node, name + ".sock"))
    reader, writer = await asyncio.open_unix_connection(os.path.join(node, "node.sock"))
    hello = {"op": "ready", "worker": name, "pid": os.getpid(),
             "generation": int(env["RAKKA_CONFIG_GENERATION"])}
    writer.write(json.dumps(hello).encode() + b"\n")
    await reader.readline()
    writer.close()
    marker = os.path.join(node, name + ".died")
    die_after = env.get("FAKE_DIE_AFTER")
    if die_after and name == env.get("FAKE_DIE_WHO") and not os.path.exists(marker):
        await asyncio.sleep(float(die_after))
        open(marker, "w").close()
        os._exit(7)
    await stop.wait()
    server.close()
    sys.exit(int(env.get("FAKE_EXIT", "0")))

asyncio.run(main())
"""

CONFIG = '[cluster]\nname = "test"\n'


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.set_inheritable(True)
    return sock


def make(
    tmp_path: Path, workers: int = 3, *, config: str | None = CONFIG, **fake: str
) -> tuple[NodeSupervisor, list[str]]:
    path = None
    if config is not None:
        path = tmp_path / "node.toml"
        path.write_text(config)
    lines: list[str] = []
    supervisor = NodeSupervisor(
        workers=workers,
        listener=listener(),
        command=(sys.executable, "-c", FAKE_WORKER),
        source=ConfigSource(path),
        env={**os.environ, **fake},
        grace_s=0.2,
        stop_margin_s=1.0,
        announce=lines.append,
    )
    return supervisor, lines


@contextlib.asynccontextmanager
async def running(supervisor: NodeSupervisor) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.get_running_loop().create_task(supervisor.run())
    try:
        async with asyncio.timeout(20):
            while not all(w.ready for w in supervisor.workers):
                assert not task.done(), task.result()
                await asyncio.sleep(0.02)
        yield task
    finally:
        supervisor.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
        supervisor.listener.close()


async def control(supervisor: NodeSupervisor, line: bytes) -> dict[str, Any]:
    path = str(control_path(supervisor.node_dir, "node"))
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(line)
        await writer.drain()
        answer: dict[str, Any] = orjson.loads(await reader.readline())
        return answer
    finally:
        writer.close()


def calls(supervisor: NodeSupervisor, worker: str) -> list[str]:
    log = supervisor.node_dir / f"{worker}.log"
    return log.read_text().split() if log.exists() else []


async def test_the_node_serves_when_every_worker_does_and_stops_cleanly(tmp_path: Path) -> None:
    supervisor, lines = make(tmp_path)
    async with running(supervisor) as task:
        await asyncio.sleep(0.05)
        assert len(lines) == 1
        assert "with 3 workers" in lines[0]
        status = await control(supervisor, b'{"op": "status"}\n')
        assert [w["worker"] for w in status["workers"]] == ["w0", "w1", "w2"]
        assert {w["state"] for w in status["workers"]} == {"ready"}
        node_dir = supervisor.node_dir
        assert (node_dir / "config-1.toml").read_text() == CONFIG
    assert task.result() == 0
    assert not node_dir.exists()


async def test_an_apply_reaches_every_worker_and_new_workers_start_on_it(
    tmp_path: Path,
) -> None:
    supervisor, _ = make(tmp_path)
    async with running(supervisor):
        answer = await supervisor.apply('[cluster]\nname = "second"\n')
        assert answer["ok"] is True, answer
        assert answer["generation"] == 2
        for index in range(3):
            assert calls(supervisor, worker_name(index)) == ["/_node/apply"]
        assert (supervisor.node_dir / "config-2.toml").read_text().endswith('"second"\n')
        assert {w.generation for w in supervisor.workers} == {2}
        # SIGHUP's path: the file read again.
        (tmp_path / "node.toml").write_text('[cluster]\nname = "third"\n')
        assert (await supervisor.reload())["generation"] == 3


async def test_a_worker_that_refuses_makes_the_others_go_back(tmp_path: Path) -> None:
    supervisor, _ = make(tmp_path, FAKE_REFUSE="w1")
    async with running(supervisor):
        answer = await supervisor.apply('[cluster]\nname = "second"\n')
        assert answer == {"ok": False, "status": 400, "message": "w1 refuses"}
        assert calls(supervisor, "w0") == ["/_node/apply", "/_node/revert"]
        assert calls(supervisor, "w1") == ["/_node/apply"]
        assert calls(supervisor, "w2") == []
        assert supervisor.generation == 1


async def test_a_config_that_does_not_load_is_refused_before_any_worker_sees_it(
    tmp_path: Path,
) -> None:
    supervisor, _ = make(tmp_path, workers=1)
    async with running(supervisor):
        refused = await supervisor.apply("[cluster]\nworkers = 0\n")
        assert refused["ok"] is False
        assert refused["status"] == 400
        assert "workers" in refused["message"]
        (tmp_path / "node.toml").unlink()
        unreadable = await supervisor.reload()
        assert unreadable["status"] == 400
        assert calls(supervisor, "w0") == []


async def test_the_sandbox_node_cannot_reload(tmp_path: Path) -> None:
    supervisor, _ = make(tmp_path, workers=1, config=None)
    async with running(supervisor):
        answer = await control(supervisor, b'{"op": "reload"}\n')
        assert answer["status"] == 409


async def test_bad_control_messages_get_an_answer_and_the_socket_keeps_serving(
    tmp_path: Path,
) -> None:
    supervisor, _ = make(tmp_path, workers=1)
    async with running(supervisor):
        for line in (
            b"not json\n",
            b"[1, 2]\n",
            b'{"op": "nothing"}\n',
            b'{"op": "apply", "toml": 3}\n',
            b'{"op": "ready", "worker": "w9", "generation": 1}\n',
        ):
            answer = await control(supervisor, line)
            assert answer["ok"] is False
            assert answer["status"] == 400, (line, answer)
        answer = await control(supervisor, b'{"op": "apply", "toml": "[cluster]\\n"}\n')
        assert answer["ok"] is True


async def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    supervisor, _ = make(tmp_path, workers=2, FAKE_DIE_AFTER="0.2", FAKE_DIE_WHO="w1")
    async with running(supervisor):
        w1 = supervisor.workers[1]
        first = w1.pid
        async with asyncio.timeout(10):
            while not (w1.restarts == 1 and w1.ready):
                await asyncio.sleep(0.05)
        assert w1.pid != first
        assert w1.backoff_s == 1.0  # it died young: the next death waits a second
        assert supervisor.workers[0].restarts == 0


async def test_a_node_whose_workers_never_serve_does_not_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    supervisor, lines = make(tmp_path, workers=2, FAKE_NEVER_READY="1")
    try:
        status = await asyncio.wait_for(supervisor.run(), 20)
    finally:
        supervisor.listener.close()
    assert status == 1
    assert lines == []
    assert "the node did not start: worker w" in capsys.readouterr().err


async def test_the_worst_exit_status_wins_and_a_stuck_worker_is_killed(tmp_path: Path) -> None:
    supervisor, _ = make(tmp_path, workers=2, FAKE_EXIT="3")
    async with running(supervisor) as task:
        pass
    assert task.result() == 3
    stuck, _ = make(tmp_path, workers=1, FAKE_IGNORE_TERM="1")
    async with running(stuck) as task:
        pass
    assert task.result() == 1  # killed: -9
    assert stuck.workers[0].exit_status == -9
