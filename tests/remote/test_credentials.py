"""Credential providers: static, env/file, a program's output, and the choice per deployment."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, SecretError
from rakka_inference.core.policies import Timeouts
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    GeminiConfig,
    OpenAIConfig,
    RemoteRuntimeConfig,
    RuntimeKind,
)
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.remote.credentials import (
    CommandCredential,
    CredentialProvider,
    OwningCredential,
    SecretRefCredential,
    StaticCredential,
    credential_provider_for,
    deployment_credential,
)
from rakka_inference.testkit.clock import FakeClock
from rakka_inference.wire.http import HttpRequest, HttpResponse, HttpTransport

PY = sys.executable


# --------------------------------------------------------------------------- static, ref


async def test_static_credential() -> None:
    provider = StaticCredential(Secret("sk-static-value"))
    assert isinstance(provider, CredentialProvider)
    await provider.refresh()
    assert (await provider.credential()).expose() == "sk-static-value"
    assert provider.describe() == "static"
    assert "sk-static" not in repr(provider)


async def test_env_credential_is_cached_until_refresh() -> None:
    environ = {"API_KEY": "sk-one"}
    provider = SecretRefCredential(SecretRef.from_env("API_KEY"), environ=environ)
    assert (await provider.credential()).expose() == "sk-one"  # first use reads it
    environ["API_KEY"] = "sk-two"
    assert (await provider.credential()).expose() == "sk-one"  # cached: no re-read
    await provider.refresh()
    assert (await provider.credential()).expose() == "sk-two"
    assert provider.describe() == "env:API_KEY"
    assert repr(provider) == "SecretRefCredential(env:API_KEY)"


async def test_file_credential_rereads_on_refresh_and_keeps_the_old_value_on_failure(
    tmp_path: Path,
) -> None:
    path = tmp_path / "key"
    path.write_text("sk-old-file-key\n")
    provider = SecretRefCredential(SecretRef.from_file(path))
    await provider.refresh()
    path.write_text("sk-new-file-key")
    assert (await provider.credential()).expose() == "sk-old-file-key"
    await provider.refresh()
    assert (await provider.credential()).expose() == "sk-new-file-key"
    path.unlink()
    with pytest.raises(SecretError, match=r"file:.*cannot be read") as caught:
        await provider.refresh()
    assert "sk-new" not in str(caught.value)
    assert (await provider.credential()).expose() == "sk-new-file-key"


async def test_credential_provider_for_picks_by_source(tmp_path: Path) -> None:
    inline = credential_provider_for(SecretRef.inline("sk-inline", warn=False))
    assert isinstance(inline, StaticCredential)
    assert (await inline.credential()).expose() == "sk-inline"
    env = credential_provider_for(SecretRef.from_env("SOME_KEY"))
    assert isinstance(env, SecretRefCredential)
    assert env.describe() == "env:SOME_KEY"
    from_file = credential_provider_for(SecretRef.from_file(tmp_path / "k"))
    assert isinstance(from_file, SecretRefCredential)


# --------------------------------------------------------------------------- command


def program(source: str) -> list[str]:
    return [PY, "-c", source]


async def test_command_credential_takes_stripped_stdout(tmp_path: Path) -> None:
    value = tmp_path / "value"
    value.write_text("tok-first")
    src = f"print('  ' + open({str(value)!r}).read() + '  ')"
    provider = CommandCredential(program(src), timeout_s=10)
    assert (await provider.credential()).expose() == "tok-first"  # first use runs it
    value.write_text("tok-second")
    assert (await provider.credential()).expose() == "tok-first"  # cached
    await provider.refresh()
    assert (await provider.credential()).expose() == "tok-second"
    assert provider.describe() == f"command:{PY}"
    assert repr(provider) == f"CommandCredential(command:{PY})"


async def test_command_credential_max_age_reruns_on_the_clock(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    src = f"f = open({str(runs)!r}, 'a'); f.write('x'); f.close(); print('tok')"
    clock = FakeClock()
    provider = CommandCredential(program(src), timeout_s=10, max_age_s=60, clock=clock)
    await provider.credential()
    clock.advance(59)
    await provider.credential()
    assert runs.read_text() == "x"
    clock.advance(1)
    await provider.credential()
    assert runs.read_text() == "xx"


async def test_concurrent_command_callers_share_one_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    src = f"f = open({str(runs)!r}, 'a'); f.write('x'); f.close(); print('tok')"
    provider = CommandCredential(program(src), timeout_s=10)
    secrets = await asyncio.gather(*(provider.credential() for _ in range(5)))
    assert {secret.expose() for secret in secrets} == {"tok"}
    assert runs.read_text() == "x"


async def test_command_failure_names_the_program_and_status_never_its_output() -> None:
    src = (
        "import sys; print('tok-leaked-on-stdout'); "
        "print('tok-leaked-on-stderr', file=sys.stderr); sys.exit(3)"
    )
    provider = CommandCredential(program(src), timeout_s=10)
    with pytest.raises(SecretError) as caught:
        await provider.refresh()
    message = str(caught.value)
    assert PY in message
    assert "exit status 3" in message
    assert "tok-leaked" not in message
    # Arguments may carry secrets: only argv[0] is named (the path itself may hold "-c").
    assert " -c" not in message.replace(PY, "<program>")
    assert "import sys" not in message


async def test_command_with_empty_or_binary_output_fails() -> None:
    empty = CommandCredential(program("print('   ')"), timeout_s=10)
    with pytest.raises(SecretError, match="printed nothing"):
        await empty.credential()
    binary = CommandCredential(
        program("import sys; sys.stdout.buffer.write(b'\\xff\\xfe')"), timeout_s=10
    )
    with pytest.raises(SecretError, match="not UTF-8"):
        await binary.credential()


async def test_command_that_cannot_start() -> None:
    provider = CommandCredential(["/nonexistent/credential-helper", "--token"], timeout_s=1)
    with pytest.raises(SecretError, match="cannot be started") as caught:
        await provider.refresh()
    assert "--token" not in str(caught.value)
    assert caught.value.__cause__ is None


def process_gone(pid: int) -> bool:
    """Not running: reaped, or a zombie waiting for a parent that is not us."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    if not status.exists():  # pragma: no cover - not Linux
        return False
    states = [
        line.split()[1] for line in status.read_text().splitlines() if line.startswith("State:")
    ]
    return states[0] in {"Z", "X"}


async def test_command_past_its_timeout_is_killed_with_its_children_and_reaped(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    src = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(30)\n"
    )
    provider = CommandCredential(program(src), timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(SecretError, match=r"did not finish within 0\.2 s") as caught:
        await provider.refresh()
    assert time.monotonic() - started < 5
    assert PY in str(caught.value)
    if pids.exists():  # the program got that far within 0.2 s
        parent, child = (int(pid) for pid in pids.read_text().split())
        with pytest.raises(ProcessLookupError):
            os.kill(parent, 0)  # killed and reaped by us: not even a zombie
        for _ in range(100):
            if process_gone(child):
                break
            await asyncio.sleep(0.01)
        assert process_gone(child)


async def test_aclose_kills_a_command_in_flight(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    src = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    provider = CommandCredential(program(src), timeout_s=30)
    waiter = asyncio.create_task(provider.credential())
    for _ in range(500):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.01)
    await provider.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_command_credential_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="program"):
        CommandCredential([], timeout_s=1)
    with pytest.raises(ValueError, match="program"):
        CommandCredential([""], timeout_s=1)
    with pytest.raises(ValueError, match="timeout_s"):
        CommandCredential(["x"], timeout_s=0)
    with pytest.raises(ValueError, match="max_age_s"):
        CommandCredential(["x"], timeout_s=1, max_age_s=0)


# --------------------------------------------------------------------------- per deployment


class ClosingTransport:
    """A transport that only records being closed (no token is fetched here)."""

    def __init__(self) -> None:
        self.closed = False

    async def send(self, request: HttpRequest, timeouts: Timeouts, *, stream: bool) -> HttpResponse:
        raise AssertionError("nothing is fetched in these tests")

    async def aclose(self) -> None:
        self.closed = True


def remote(runtime: RuntimeKind, config: RemoteRuntimeConfig) -> Deployment:
    return Deployment(name="d", model="m", runtime=runtime, runtime_config=config)


def no_transport() -> HttpTransport:
    raise AssertionError("an API key needs no transport of its own")


async def test_a_deployment_sends_the_secret_its_config_names() -> None:
    key = SecretRef.inline("sk-key", warn=False)
    token = SecretRef.inline("entra-token", warn=False)
    plain = remote(RuntimeKind.OPENAI, OpenAIConfig(api_key=key))
    azure = remote(
        RuntimeKind.OPENAI,
        OpenAIConfig(variant="azure", api_key=key, azure_ad_token=token),
    )
    for deployment, expected in ((plain, "sk-key"), (azure, "entra-token")):
        config = deployment.runtime_config
        assert isinstance(config, RemoteRuntimeConfig)
        provider = deployment_credential(deployment, config, no_transport)
        assert (await provider.credential()).expose() == expected


async def test_a_token_credential_owns_its_transport(tmp_path: Path) -> None:
    config = GeminiConfig(
        variant="vertex",
        project="p",
        region="us-central1",
        credentials=SecretRef.from_file(tmp_path / "sa.json"),
    )
    transport = ClosingTransport()
    provider = deployment_credential(remote(RuntimeKind.GEMINI, config), config, lambda: transport)
    assert isinstance(provider, OwningCredential)
    assert provider.describe().startswith("service-account file:")
    await provider.aclose()
    assert transport.closed


def test_a_missing_credential_names_its_field() -> None:
    config = AnthropicConfig()
    with pytest.raises(ConfigError, match=r"runtime_config\.api_key"):
        deployment_credential(remote(RuntimeKind.ANTHROPIC, config), config, no_transport)
