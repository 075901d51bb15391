"""``rakka serve`` starting, as a real process: a secret that cannot be read or a port in
use is one line on stderr and exit status 1, with one worker or several; the "serving"
line comes once it serves; ``rakka status`` works against the no-config sandbox."""

from __future__ import annotations

import re
import secrets
import socket
import textwrap
from pathlib import Path

import httpx
import pytest
from serve_process import clean_env, free_port, run_rakka, running

from rakka_inference.apps.serve import serve

MOCK_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mock-providers.toml"
UNSET = "RAKKA_STARTUP_TEST_UNSET_KEY"


def nothing_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_secret_that_cannot_be_read_is_one_line_and_exit_1(
    tmp_path: Path, workers: str
) -> None:
    port = free_port()
    file = tmp_path / "rakka.toml"
    file.write_text(
        textwrap.dedent(
            f"""\
            [cluster]
            bind = "127.0.0.1:{port}"

            [[deployment]]
            name = "gpt"
            model = "gpt-4o-mini"
            runtime = "openai"
            [deployment.runtime_config]
            api_key = {{ from_env = "{UNSET}" }}
            """
        )
    )
    done = await run_rakka("serve", "--config", str(file), "--workers", workers)
    assert done.status == 1, done
    assert done.stderr == (
        f"rakka: cannot serve: {file}:9: deployment[0].runtime_config.api_key: "
        f"secret env:{UNSET} is not set\n"
    )
    assert done.stdout == ""
    assert nothing_listens(port)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("config", [None, MOCK_EXAMPLE], ids=["sandbox", "config"])
async def test_a_port_in_use_is_one_line_and_exit_1(workers: str, config: Path | None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        extra = () if config is None else ("--config", str(config))
        done = await run_rakka("serve", "--port", str(port), "--workers", workers, *extra)
    assert done.status == 1, done
    assert done.stderr == f"rakka: cannot listen on 127.0.0.1:{port}: the port is in use\n"
    assert done.stdout == ""  # no "serving", and no admin key for a gateway that never was


async def test_it_says_it_serves_once_it_does() -> None:
    port = free_port()
    async with running("serve", "--port", str(port), "--grace", "5") as rakka:
        line = await rakka.line(r"^rakka: serving ")
        assert line == (
            "rakka: serving sandbox-gpt, sandbox-embed, sandbox-claude, sandbox-gemini on "
            f"http://127.0.0.1:{port}\n"
        )
        # Said once the topology started and the socket listens: the first try answers.
        async with httpx.AsyncClient(timeout=10) as client:
            ready = await client.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200
        before = rakka.output[: rakka.output.index(line)]
        assert any("Application startup complete" in earlier for earlier in before)
        assert await rakka.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_rakka_status_against_the_sandbox_with_the_key_it_printed(workers: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("serve", "--port", str(port), "--grace", "5", "--workers", workers)
    async with running(*args) as rakka:
        await rakka.line(r"^rakka: (node )?serving ")
        notice = await rakka.line(r"admin API key")  # printed once it serves
        found = re.search(
            r"^rakka: admin API key for this run, for rakka status: "
            r"export RAKKA_ADMIN_KEY=([0-9a-f]{48})$",
            notice,
            re.MULTILINE,
        )
        assert found is not None, notice
        key = found.group(1)
        done = await run_rakka("status", "--url", url, env=clean_env(RAKKA_ADMIN_KEY=key))
        assert done.status == 0, done.stderr
        assert re.search(r"^sandbox-gpt +serving ", done.stdout, re.MULTILINE), done.stdout
        unset = await run_rakka("status", "--url", url)
        assert unset.status == 1
        assert unset.stderr.startswith("rakka: set RAKKA_ADMIN_KEY to the gateway's admin key")
        wrong = await run_rakka("status", "--url", url, env=clean_env(RAKKA_ADMIN_KEY="x" + key))
        assert wrong.status == 1
        assert "the gateway answered 401" in wrong.stderr
        assert await rakka.stop() == 0
    assert "".join(rakka.output).count(key) == 1  # the one line, and in no log


async def test_the_sandbox_takes_the_admin_key_already_set_and_never_prints_it() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = secrets.token_hex(16)
    env = clean_env(RAKKA_ADMIN_KEY=key)
    async with running("serve", "--port", str(port), "--grace", "5", env=env) as rakka:
        await rakka.line(r"^rakka: serving ")
        await rakka.line(r"^rakka: the admin API takes the key in \$RAKKA_ADMIN_KEY")
        done = await run_rakka("status", "--url", url, "--json", env=env)
        assert done.status == 0, done.stderr
        assert "sandbox-claude" in done.stdout
        assert await rakka.stop() == 0
    assert key not in "".join(rakka.output)


def test_mock_providers_are_refused_on_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "rakka.toml"
    file.write_text('[cluster]\nbackend = "ray"\nmock_providers = true\n')
    assert serve(str(file)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"rakka: {file}: [cluster].mock_providers runs the mocks in this process, not on a "
        "Ray cluster: leave it out, or backend = 'local'\n"
    )


async def test_an_inline_secret_is_warned_of_once_and_never_shown(tmp_path: Path) -> None:
    file = tmp_path / "rakka.toml"
    file.write_text(
        textwrap.dedent(
            """\
            [[deployment]]
            name = "gpt"
            model = "gpt-4o-mini"
            runtime = "openai"
            [deployment.runtime_config]
            api_key = "sk-inline-3c5e7a9b1d"
            """
        )
    )
    with socket.socket() as taken:  # it stops at the bind, after reading the config
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await run_rakka("serve", "--config", str(file), "--port", str(port))
    assert done.status == 1, done
    assert done.stderr.splitlines() == [
        f"warning: {file}:6: deployment[0].runtime_config.api_key: a secret is given inline; "
        "prefer { from_env = ... } or { from_file = ... }",
        f"rakka: cannot listen on 127.0.0.1:{port}: the port is in use",
    ]
    assert "3c5e7a9b1d" not in done.stdout + done.stderr
