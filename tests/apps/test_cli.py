"""The ``rakka`` command, driven through ``main(argv)``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rakka_inference import __version__
from rakka_inference.apps import serve as serve_module
from rakka_inference.apps.cli import format_summary, main
from rakka_inference.core.config import LoadedConfig
from rakka_inference.core.deployment import Config, Deployment
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rakka.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rakka.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture(autouse=True)
def no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "LITELLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"rakka {__version__}\n"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: rakka" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-everything"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "validate" in capsys.readouterr().out


def test_validate_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    # Its secrets live on the serving machine: --no-secrets checks it here.
    assert main(["validate", "--no-secrets", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"{EXAMPLE}: OK"
    assert lines[1] == (
        "cluster 'prod' on 127.0.0.1:8080; client keys: env:RAKKA_CLIENT_KEY; "
        "admin key: file:/run/secrets/rakka-admin"
    )
    assert lines[2] == "7 deployments:"
    assert lines[3] == (
        "  gpt-4o: model gpt-4o; runtime openai; replicas 2; fallbacks claude-sonnet-4; "
        "key env:OPENAI_API_KEY"
    )
    assert lines[4] == (
        "  claude-sonnet-4: model claude-sonnet-4-20250514; runtime anthropic (inferred); "
        "replicas 1; fallbacks gpt-4o-azure; aliases sonnet; key env:ANTHROPIC_API_KEY"
    )
    assert "runtime openai (azure)" in lines[5]
    assert lines[6] == (
        "  gemini-pro: model google/gemini-2.5-pro (upstream gemini-2.5-pro); "
        "runtime gemini (vertex); replicas 1; aliases gemini; "
        f"credentials file:{EXAMPLE.parent / 'sa.json'}"
    )
    assert "key env:LITELLM_MASTER_KEY" in lines[7]
    assert lines[8] == (
        "  gpt-oss-20b: model openai/gpt-oss-20b (upstream gpt-oss-20b); runtime vllm; replicas 1"
    )


def test_validate_shows_inferred_runtimes_and_default_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    path = write(
        tmp_path,
        """
        [[deployment]]
        name = "oss"
        model = "gpt-oss-20b"

        [[deployment]]
        name = "llama"
        model = "meta-llama/Llama-3.1-8B"
        replicas = 3
        """,
    )
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "  oss: model gpt-oss-20b; runtime openai (inferred); replicas 1; "
        "key env:OPENAI_API_KEY (default)"
    ) in out
    assert "  llama: model meta-llama/Llama-3.1-8B; runtime vllm (inferred); replicas 3\n" in out
    assert "sk-from-the-environment" not in out


def test_validate_an_empty_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "")
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: OK",
        "cluster 'rakka' on 127.0.0.1:8080; client keys: none (open); "
        "admin key: none (admin API off)",
        "0 deployments",
    ]


def test_validate_never_prints_an_inline_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        [cluster]
        client_api_keys = ["client-secret-1"]

        [[deployment]]
        name = "claude"
        model = "claude-sonnet-4"
        [deployment.runtime_config]
        api_key = "sk-ant-very-secret"
        """,
    )
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "client keys: inline" in out
    assert (
        "  claude: model claude-sonnet-4; runtime anthropic (inferred); replicas 1; key inline"
        in out
    )
    assert err.splitlines() == [
        f"warning: {path}:2: cluster.client_api_keys[0]: a secret is given inline; "
        "prefer { from_env = ... } or { from_file = ... }",
        f"warning: {path}:8: deployment[0].runtime_config.api_key: a secret is given inline; "
        "prefer { from_env = ... } or { from_file = ... }",
    ]
    for secret in ("client-secret-1", "sk-ant-very-secret"):
        assert secret not in out
        assert secret not in err


def test_validate_reports_every_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        """
        [cluster]
        bind = "8080"

        [[deployment]]
        name = "a"
        model = "m"
        replicas = 0
        fallbacks = ["b"]
        """,
    )
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: configuration rejected (3 issues)",
        f"  {path}:2: cluster.bind: must be host:port, such as '127.0.0.1:8080' or "
        "'[::1]:8080', got '8080'",
        f"  {path}:7: deployment[0].replicas: must be in 1..256, got 0",
        f"  {path}:8: deployment[0].fallbacks[0]: fallback 'b' is not a deployment",
    ]


def test_validate_a_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[cluster]\nname = "unterminated\n')
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: configuration rejected (1 issue)\n" in err
    assert f"  {path}:2: TOML syntax error: " in err


def test_validate_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["validate", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{missing}: cannot read the file: No such file or directory" in err
    assert "Traceback" not in err


def test_summary_of_other_credential_kinds() -> None:
    azure = Deployment(
        name="azure",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            variant="azure",
            resource="r",
            deployment="d",
            api_version="v",
            azure_ad_token=SecretRef.from_env("AZURE_TOKEN"),
        ),
    )
    keyless = Deployment(
        name="compat",
        model="local-model",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(endpoint="http://127.0.0.1:8000/v1"),
    )
    summary = format_summary(LoadedConfig(Config(deployments=(azure, keyless)), "<python>"))
    assert (
        "  azure: model gpt-4o; runtime openai (azure); replicas 1; token env:AZURE_TOKEN"
        in summary
    )
    assert summary.endswith("  compat: model local-model; runtime openai; replicas 1; key none")
    assert "2 deployments:" in summary


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """``rakka serve``'s server replaced by a recorder: no socket is opened."""
    calls: list[dict[str, object]] = []

    def record(config: str | None, **kwargs: object) -> int:
        calls.append({"config": config, **kwargs})
        return 0

    monkeypatch.setattr(serve_module, "serve", record)
    return calls


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1", "80x", "", "\u0668\u0660"])
def test_serve_refuses_a_port_outside_1_to_65535(
    port: str, served: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", f"--port={port}"]) == 2
    assert "argument --port: must be a port in 1..65535" in capsys.readouterr().err
    assert served == []


@pytest.mark.parametrize(
    "host", ["", "a b", "host:8080", "-bad.example", "1.2.3.999", "http://x", "x" * 254, "[::1"]
)
def test_serve_refuses_a_host_that_is_no_name_or_address(
    host: str, served: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", f"--host={host}"]) == 2
    assert "argument --host: not a host name or IP address" in capsys.readouterr().err
    assert served == []


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("localhost", "1", ("localhost", 1)),
        ("0.0.0.0", "65535", ("0.0.0.0", 65535)),
        ("[::1]", "8080", ("::1", 8080)),
        ("gateway.internal.", "8080", ("gateway.internal.", 8080)),
    ],
)
def test_serve_takes_a_host_and_port_in_range(
    host: str, port: str, expected: tuple[str, int], served: list[dict[str, object]]
) -> None:
    assert main(["serve", "--host", host, "--port", port]) == 0
    assert (served[0]["host"], served[0]["port"]) == expected


def test_serve_exits_1_when_a_secret_is_not_set(tmp_path: Path) -> None:
    # The documented status of a rejected configuration, not uvicorn's startup failure (3),
    # and one line that names the file, the line and the field: no traceback, no log.
    file = write(
        tmp_path,
        """
        [cluster]
        bind = "127.0.0.1:1"

        [[deployment]]
        name = "gpt"
        model = "gpt-4o-mini"
        runtime = "openai"
        [deployment.runtime_config]
        api_key = { from_env = "RAKKA_CLI_TEST_UNSET_KEY" }
        """,
    )
    environ = {k: v for k, v in os.environ.items() if k != "RAKKA_CLI_TEST_UNSET_KEY"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rakka_inference.apps.cli import main; raise SystemExit(main())",
            "serve",
            "--config",
            str(file),
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"rakka: cannot serve: {file}:9: deployment[0].runtime_config.api_key: "
        "secret env:RAKKA_CLI_TEST_UNSET_KEY is not set\n"
    )
    assert done.stdout == ""
    # ``validate`` reads it too; --no-secrets checks the file alone.
    assert main(["validate", str(file)]) == 1
    assert main(["validate", "--no-secrets", str(file)]) == 0


def test_serve_lists_several_issues_as_validate_does(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        """
        [cluster]
        admin_api_key = { from_env = "RAKKA_CLI_TEST_UNSET_ADMIN" }
        client_api_keys = [{ from_file = "missing-client.key" }]
        """,
    )
    environ = {k: v for k, v in os.environ.items() if k != "RAKKA_CLI_TEST_UNSET_ADMIN"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rakka_inference.apps.cli import main; raise SystemExit(main())",
            "serve",
            "--config",
            str(file),
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"rakka: cannot serve: {file}: configuration rejected (2 issues)",
        f"  {file}:2: cluster.admin_api_key: secret env:RAKKA_CLI_TEST_UNSET_ADMIN is not set",
        f"  {file}:3: cluster.client_api_keys[0]: secret file:{tmp_path / 'missing-client.key'} "
        "cannot be read: No such file or directory",
    ]
