"""``rakka validate`` refuses two deployments on one circuit breaker with different
``circuit_breaker`` settings, as an apply does, on the file's line — from the config alone.

The breaker's key is (provider, endpoint as the adapter calls it, upstream model), so the
cases below are ones a comparison of the raw settings would get wrong: no ``endpoint`` and
the default endpoint written out with a trailing slash are one endpoint; ``openai/gpt-4o``
and ``gpt-4o`` are one upstream model.
"""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rakka_inference.apps.cli import main
from rakka_inference.core.config import load_config, parse_config_report
from rakka_inference.core.errors import ConfigError
from rakka_inference.remote.breaker import BreakerKey
from rakka_inference.remote.breaker_registry import breaker_conflicts, breaker_key
from rakka_inference.runtime.topology import Topology

TWO_ON_ONE_BREAKER = """
[[deployment]]
name = "gpt4o-a"
model = "gpt-4o"
runtime = "openai"
[deployment.runtime_config]
api_key = { from_env = "RAKKA_TEST_OPENAI_KEY" }
[deployment.runtime_config.circuit_breaker]
failure_threshold = 3

[[deployment]]
name = "local"
model = "tiny"
runtime = "transformers"

[[deployment]]
name = "gpt4o-b"
model = "openai/gpt-4o"
runtime = "openai"
[deployment.runtime_config]
endpoint = "https://api.openai.com/v1/"
api_key = { from_env = "RAKKA_TEST_OPENAI_KEY" }
[deployment.runtime_config.circuit_breaker]
failure_threshold = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rakka.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def last_line_of(path: Path, text: str) -> int:
    """The 1-based number of the last line of ``path`` that reads ``text``."""
    lines = path.read_text().splitlines()
    return len(lines) - lines[::-1].index(text)


@pytest.fixture(autouse=True)
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any connection attempt is recorded and refused: validating opens none."""
    attempts: list[Any] = []

    def refuse(sock: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("no connection may be opened here")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_validate_refuses_one_upstream_with_two_circuit_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_connections: list[Any]
) -> None:
    path = write(tmp_path, TWO_ON_ONE_BREAKER)
    line = last_line_of(path, "[deployment.runtime_config.circuit_breaker]")  # gpt4o-b's

    assert main(["validate", "--no-secrets", str(path)]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: configuration rejected (1 issue)",
        f"  {path}:{line}: deployment[2].runtime_config.circuit_breaker: "
        "deployment 'gpt4o-b'.runtime_config.circuit_breaker differs from deployment "
        "'gpt4o-a', which calls the same upstream (openai model 'gpt-4o' at the same "
        "endpoint): deployments that share a circuit breaker must set the same "
        "circuit_breaker (unset is the defaults)",
    ]
    assert "api.openai.com" not in err  # the endpoint stays out, as an apply's does
    assert no_connections == []


def test_an_unset_table_is_the_defaults_and_differs_from_a_set_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = TWO_ON_ONE_BREAKER.replace(
        "[deployment.runtime_config.circuit_breaker]\nfailure_threshold = 5\n", ""
    )
    path = write(tmp_path, text)
    assert main(["validate", "--no-secrets", str(path)]) == 1
    err = capsys.readouterr().err
    # No table of its own: the issue is on the line of the nearest one written.
    line = last_line_of(path, "[deployment.runtime_config]")
    assert f"{path}:{line}: deployment[2].runtime_config.circuit_breaker: " in err


def test_other_models_or_endpoints_or_the_same_settings_are_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_model = TWO_ON_ONE_BREAKER.replace('"openai/gpt-4o"', '"gpt-4o-mini"')
    other_endpoint = TWO_ON_ONE_BREAKER.replace("api.openai.com/v1/", "eu.example.com/v1")
    same = TWO_ON_ONE_BREAKER.replace("failure_threshold = 5", "failure_threshold = 3")
    for text in (other_model, other_endpoint, same):
        path = write(tmp_path, text)
        assert main(["validate", "--no-secrets", str(path)]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith(f"{path}: OK\n")


def test_the_conflict_is_reported_with_the_other_issues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, TWO_ON_ONE_BREAKER + '\n[[deployment]]\nname = "broken"\n')
    assert main(["validate", "--no-secrets", str(path)]) == 1
    err = capsys.readouterr().err
    assert "configuration rejected (2 issues)" in err
    assert "deployment[2].runtime_config.circuit_breaker" in err
    assert "deployment[3].model" in err


def test_the_key_is_the_one_the_engines_use() -> None:
    loaded = parse_config_report(TWO_ON_ONE_BREAKER)
    a, local, b = loaded.config.deployments
    key = BreakerKey("openai", "https://api.openai.com/v1/chat/completions", "gpt-4o")
    assert breaker_key(a) == breaker_key(b) == key
    with pytest.raises(ConfigError):
        breaker_key(local)
    [issue] = breaker_conflicts(loaded.config.deployments)
    assert (issue.position, issue.field) == (2, ("runtime_config", "circuit_breaker"))


async def test_validate_says_what_an_apply_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAKKA_TEST_OPENAI_KEY", "sk-test-circuits-0001")
    local = '[[deployment]]\nname = "local"\nmodel = "tiny"\nruntime = "transformers"\n\n'
    path = write(tmp_path, TWO_ON_ONE_BREAKER.replace(local, ""))  # no local model to load
    assert main(["validate", str(path)]) == 1
    said = capsys.readouterr().err.splitlines()[1]

    topology = Topology(load_config(path))  # loaded without the check: applied as it is
    try:
        with pytest.raises(ConfigError) as refused:
            await topology.start()
    finally:
        await topology.stop()
    [issue] = refused.value.issues
    assert issue.path == "deployment 'gpt4o-b'.runtime_config.circuit_breaker"
    assert said.endswith(f": {issue.message}")
