"""Two deployments on one rate limiter with different ``rate_limits`` are refused alike by
``rakka validate``, at start and by every apply (a reload, the admin API) — found by what
the keys hold, not only by how the config names them: two variables holding one key share
one limiter at the provider, so they are one limiter here too. Messages name both
deployments and their fields, never a key.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from rakka_inference.apps.cli import main
from rakka_inference.core.config import load_config
from rakka_inference.core.errors import ConfigError
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

KEY = "sk-validate-limits-0001"
ADMIN = "rk-validate-limits-admin-0002"

TWO_NAMES_ONE_KEY = """
[cluster]
admin_api_key = {{ from_env = "RAKKA_TEST_ADMIN" }}

[[deployment]]
name = "capped"
model = "gpt-4o"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{endpoint}"
api_key = {{ from_env = "RAKKA_TEST_KEY_ONE" }}
[deployment.runtime_config.rate_limits]
requests_per_minute = 10

[[deployment]]
name = "open"
model = "openai/gpt-4o"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{endpoint}"
api_key = {{ from_env = "RAKKA_TEST_KEY_TWO" }}
"""

MESSAGE = (
    "deployment 'open'.runtime_config.rate_limits differs from deployment "
    "'capped'.runtime_config.rate_limits, with which it shares one rate limiter (provider "
    "'openai', key env:RAKKA_TEST_KEY_TWO, which holds the key of env:RAKKA_TEST_KEY_ONE, "
    "model 'gpt-4o'): deployments that share a rate limiter must set the same rate_limits "
    "(unset is unlimited)"
)


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAKKA_TEST_KEY_ONE", KEY)
    monkeypatch.setenv("RAKKA_TEST_KEY_TWO", KEY)
    monkeypatch.setenv("RAKKA_TEST_ADMIN", ADMIN)


@pytest.fixture
async def mock() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(faults=FaultPlan(valid_keys={KEY})) as server:
        yield server


def write(tmp_path: Path, endpoint: str) -> Path:
    path = tmp_path / "rakka.toml"
    path.write_text(textwrap.dedent(TWO_NAMES_ONE_KEY.format(endpoint=endpoint)).lstrip("\n"))
    return path


def line_of(path: Path, text: str, nth: int) -> int:
    """The 1-based number of the ``nth`` line of ``path`` that reads ``text``."""
    lines = path.read_text().splitlines()
    return [i for i, line in enumerate(lines, 1) if line == text][nth]


def test_validate_refuses_two_variables_holding_one_key_with_two_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "https://api.openai.com/v1")
    line = line_of(path, "[deployment.runtime_config]", 1)  # open's: it sets no limits table

    assert main(["validate", str(path)]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: configuration rejected (1 issue)",
        f"  {path}:{line}: deployment[1].runtime_config.rate_limits: {MESSAGE}",
    ]
    assert KEY not in err
    # Without reading the secrets, two references are two keys as far as can be told.
    assert main(["validate", "--no-secrets", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: OK\n")


def test_other_keys_or_the_same_limits_are_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "https://api.openai.com/v1")
    monkeypatch.setenv("RAKKA_TEST_KEY_TWO", "sk-another-key")
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    monkeypatch.setenv("RAKKA_TEST_KEY_TWO", KEY)
    path.write_text(
        path.read_text() + "[deployment.runtime_config.rate_limits]\nrequests_per_minute = 10\n"
    )
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


async def test_start_refuses_it_as_validate_does(tmp_path: Path, mock: OpenAIMock) -> None:
    path = write(tmp_path, mock.openai_base_url)
    with pytest.raises(ConfigError) as at_load:  # rakka serve reads its secrets first
        load_config(path, check_secrets=True)
    [issue] = at_load.value.issues
    assert issue.message == MESSAGE
    topology = Topology(load_config(path))  # were it loaded without: the apply refuses it
    try:
        with pytest.raises(ConfigError) as at_apply:
            await topology.start()
    finally:
        await topology.stop()
    [issue] = at_apply.value.issues
    assert (issue.path, issue.message) == ("deployment 'open'.runtime_config.rate_limits", MESSAGE)


async def test_an_admin_apply_refuses_it_and_changes_nothing(
    tmp_path: Path, mock: OpenAIMock
) -> None:
    path = write(tmp_path, mock.openai_base_url)
    capped_alone = path.read_text().split('[[deployment]]\nname = "open"')[0]
    path.write_text(capped_alone)
    topology = Topology(load_config(path, check_secrets=True))
    async with serving(topology.gateway) as base, httpx.AsyncClient(base_url=base) as http:
        refused = await http.post(
            "/admin/deployments",
            headers={"authorization": f"Bearer {ADMIN}"},
            content=write(tmp_path, mock.openai_base_url).read_text(),
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "deployment 'open'.runtime_config.rate_limits"
        assert MESSAGE in error["message"]
        assert KEY not in refused.text
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": "capped", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200, chat.text
        assert [d.name for d in topology.config.deployments] == ["capped"]
        [use] = topology.services.limiters.utilization()
        assert use.requests_per_minute == 10
