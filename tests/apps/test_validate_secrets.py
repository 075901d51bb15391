"""``rakka validate`` reads every secret a configuration would read at start: one that
cannot be read is an issue naming the file, line and field; ``--no-secrets`` skips them;
no value is ever printed, not even in part."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rakka_inference.apps.cli import main

ENV_SECRET = "sk-live-ENV-4f1c9a7e2b"
FILE_SECRET = "sk-live-FILE-8d2e6b0c3a"
UNDECODABLE = b"\xff\xfesk-live-BYTES-5a9c1e7d"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rakka.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture(autouse=True)
def no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "LITELLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RAKKA_VALIDATE_TEST_UNSET", raising=False)


CONFIG = """
    [cluster]
    admin_api_key = { from_file = "admin.key" }
    client_api_keys = [{ from_env = "RAKKA_VALIDATE_TEST_CLIENT" }, { from_file = "empty.key" }]

    [[deployment]]
    name = "gpt"
    model = "gpt-4o-mini"
    runtime = "openai"

    [[deployment]]
    name = "claude"
    model = "claude-haiku-4-5"
    runtime = "anthropic"
    [deployment.runtime_config]
    api_key = { from_env = "RAKKA_VALIDATE_TEST_UNSET" }

    [[deployment]]
    name = "gemini"
    model = "gemini-2.5-flash"
    runtime = "gemini"
    [deployment.runtime_config]
    api_key = { from_file = "binary.key" }

    [[deployment]]
    name = "azure"
    model = "gpt-4o"
    runtime = "openai"
    [deployment.runtime_config]
    variant = "azure"
    resource = "r"
    deployment = "d"
    api_version = "2024-10-21"
    azure_ad_token = { from_file = "nowhere/token" }
    """


def test_every_secret_that_cannot_be_read_is_an_issue_on_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAKKA_VALIDATE_TEST_CLIENT", ENV_SECRET)
    (tmp_path / "admin.key").write_text(FILE_SECRET + "\n")
    (tmp_path / "empty.key").write_text("\n")
    (tmp_path / "binary.key").write_bytes(UNDECODABLE)
    path = write(tmp_path, CONFIG)
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: configuration rejected (5 issues)",
        f"  {path}:3: cluster.client_api_keys[1]: secret file:{tmp_path / 'empty.key'} is empty",
        f"  {path}:5: deployment[0].runtime_config.api_key: secret env:OPENAI_API_KEY is not "
        "set (the default for runtime 'openai')",
        f"  {path}:15: deployment[1].runtime_config.api_key: secret "
        "env:RAKKA_VALIDATE_TEST_UNSET is not set",
        f"  {path}:22: deployment[2].runtime_config.api_key: secret "
        f"file:{tmp_path / 'binary.key'} is not UTF-8 text",
        f"  {path}:33: deployment[3].runtime_config.azure_ad_token: secret "
        f"file:{tmp_path / 'nowhere' / 'token'} cannot be read: No such file or directory",
    ]
    assert_no_part_of_a_secret(out + err)


def test_no_secrets_checks_the_file_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONFIG)
    assert main(["validate", "--no-secrets", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{path}: OK"
    assert err == ""


def test_secrets_that_can_be_read_pass_and_are_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAKKA_VALIDATE_TEST_CLIENT", ENV_SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", ENV_SECRET)
    monkeypatch.setenv("RAKKA_VALIDATE_TEST_UNSET", ENV_SECRET)
    for name in ("admin.key", "empty.key", "binary.key"):
        (tmp_path / name).write_text(FILE_SECRET)
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "token").write_text(FILE_SECRET)
    path = write(tmp_path, CONFIG)
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{path}: OK"
    assert "client keys: env:RAKKA_VALIDATE_TEST_CLIENT, file:" in out
    assert err == ""
    assert_no_part_of_a_secret(out + err)


def test_a_directory_named_as_a_secret_file_is_an_issue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keys").mkdir()
    path = write(
        tmp_path,
        """
        [cluster]
        admin_api_key = { from_file = "keys" }
        """,
    )
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"  {path}:2: cluster.admin_api_key: secret file:{tmp_path / 'keys'} cannot be " in err
    assert "Traceback" not in err


def assert_no_part_of_a_secret(text: str) -> None:
    """No run of 6 characters of any secret's value appears in ``text``."""
    undecodable = UNDECODABLE.decode("latin-1")
    for secret in (ENV_SECRET, FILE_SECRET, undecodable, UNDECODABLE.hex()):
        for start in range(len(secret) - 5):
            piece = secret[start : start + 6]
            if piece.startswith("sk-liv") or piece in "sk-live-":
                continue  # the shared prefix says nothing of a value
            assert piece not in text, piece
    assert "0xff" not in text
    assert "\\xff" not in text
