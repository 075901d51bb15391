"""A Secret's value leaves only through ``expose()``: not by repr, format, log, JSON or pickle."""

from __future__ import annotations

import copy
import io
import json
import logging
import pickle
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from rakka_inference.core.config import parse_config
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import SecretError
from rakka_inference.core.runtimes import AnthropicConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import InlineSecretWarning, Secret, SecretRef

VALUE = "sk-live-0123456789abcdef"
MASK = "Secret('**********')"


@pytest.fixture
def secret() -> Secret:
    return Secret(VALUE)


@dataclass(frozen=True)
class Holder:
    """A record that carries a secret, as a session or a request would."""

    name: str
    key: Secret


# --------------------------------------------------------------------------- text


def test_repr_and_str_are_a_mask(secret: Secret) -> None:
    assert repr(secret) == MASK
    assert str(secret) == MASK
    assert VALUE not in repr([secret, {"k": secret}, (secret,)])


@pytest.mark.parametrize(
    "template", ["{s}", "{s!r}", "{s!s}", "{s!a}", "{s:>40}", "{s:<5}", "{s:x^60}", "{s:.3}"]
)
def test_format_and_fstrings_are_a_mask(secret: Secret, template: str) -> None:
    assert VALUE not in template.format(s=secret)
    assert MASK in template.format(s=secret)


def test_fstrings_with_conversions_and_specs(secret: Secret) -> None:
    rendered = [f"{secret}", f"{secret!r}", f"{secret!s}", f"{secret:>20}", f"{secret=}"]
    assert all(VALUE not in text and MASK in text for text in rendered)


def test_percent_formatting_is_a_mask(secret: Secret) -> None:
    assert "key=%s" % secret == f"key={MASK}"  # noqa: UP031
    assert "key=%r" % secret == f"key={MASK}"  # noqa: UP031
    assert VALUE not in "%(k)s %(k)r" % {"k": secret}  # noqa: UP031


def test_containers_of_secrets_are_masked(secret: Secret) -> None:
    holder = Holder("openai", secret)
    assert VALUE not in repr(holder)
    assert VALUE not in str(holder)
    assert VALUE not in f"{holder}"


def test_no_instance_dict(secret: Secret) -> None:
    assert not hasattr(secret, "__dict__")
    with pytest.raises(TypeError):
        vars(secret)


def test_immutable(secret: Secret) -> None:
    with pytest.raises(AttributeError, match="immutable"):
        secret._value = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        secret.extra = 1  # type: ignore[attr-defined]
    assert secret.expose() == VALUE


def test_only_strings() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        Secret(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- logging


def test_logging_through_caplog(secret: Secret, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("rakka.test.secrets")
    with caplog.at_level(logging.DEBUG, logger="rakka.test.secrets"):
        logger.info("key %s", secret)
        logger.info("key %r", secret)
        logger.info("holder %s", Holder("h", secret))
        logger.info(f"f-string {secret}")
        logger.info("mapping %(key)s", {"key": secret})
    assert len(caplog.records) == 5
    assert VALUE not in caplog.text
    assert all(VALUE not in record.getMessage() for record in caplog.records)


def test_logging_through_a_real_handler(secret: Secret) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s %(message)s %(args)s %(holder)s")
    )
    logger = logging.getLogger("rakka.test.secrets.handler")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        holder = Holder("openai", secret)
        logger.warning("holder %s", holder, extra={"holder": holder})
        logger.debug("pair %s %r", secret, (secret,), extra={"holder": [secret]})
        try:
            raise RuntimeError("upstream rejected", secret, {"key": secret})
        except RuntimeError:
            logger.exception("failed with %s", secret, extra={"holder": holder})
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "Traceback" in output
    assert "upstream rejected" in output
    assert output.count(MASK) >= 5
    assert VALUE not in output


# --------------------------------------------------------------------------- exceptions


def test_exceptions_and_tracebacks(secret: Secret) -> None:
    error = ValueError("bad key", secret)
    assert VALUE not in str(error)
    assert VALUE not in repr(error)
    try:
        raise KeyError(secret)
    except KeyError as exc:
        text = "".join(traceback.format_exception(exc))
    assert "KeyError" in text
    assert VALUE not in text


def test_a_traceback_with_locals_does_not_show_the_value(secret: Secret) -> None:
    key = secret  # a local a debugger or capture_locals would show
    try:
        raise RuntimeError(f"cannot use {key}")
    except RuntimeError as exc:
        summary = traceback.TracebackException.from_exception(exc, capture_locals=True)
        text = "".join(summary.format())
    assert MASK in text
    assert VALUE not in text


# --------------------------------------------------------------------------- serialization


def test_json_refuses(secret: Secret) -> None:
    with pytest.raises(TypeError):
        json.dumps({"key": secret})
    with pytest.raises(TypeError):
        json.dumps([secret])


def test_json_with_default_str_is_a_mask(secret: Secret) -> None:
    assert VALUE not in json.dumps({"key": secret}, default=str)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_refuses(secret: Secret, protocol: int) -> None:
    with pytest.raises(SecretError, match="cannot be pickled"):
        pickle.dumps(secret, protocol=protocol)
    with pytest.raises(SecretError):
        pickle.dumps(Holder("h", secret), protocol=protocol)


def test_getstate_and_reduce_refuse(secret: Secret) -> None:
    with pytest.raises(SecretError):
        secret.__getstate__()
    with pytest.raises(SecretError):
        secret.__reduce__()


def test_copies_are_the_same_object(secret: Secret) -> None:
    assert copy.copy(secret) is secret
    assert copy.deepcopy(secret) is secret
    assert copy.deepcopy(Holder("h", secret)).key is secret


# --------------------------------------------------------------------------- value semantics


def test_expose_gives_the_value_back(secret: Secret) -> None:
    assert secret.expose() == VALUE
    assert len(secret) == len(VALUE)


def test_equality_and_hash(secret: Secret) -> None:
    same = Secret(VALUE)
    other = Secret(VALUE + "x")
    assert secret == same
    assert secret != other
    assert hash(secret) == hash(same)
    assert secret != VALUE  # never equal to the plain string
    assert len({secret, same, other}) == 2


def test_fingerprint_is_stable_and_short(secret: Secret) -> None:
    assert secret.fingerprint() == Secret(VALUE).fingerprint()
    assert secret.fingerprint() != Secret(VALUE + "x").fingerprint()
    assert len(secret.fingerprint()) == 16
    assert VALUE not in secret.fingerprint()
    assert int(secret.fingerprint(), 16) >= 0


# --------------------------------------------------------------------------- references


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = SecretRef.from_env("RAKKA_TEST_KEY")
    monkeypatch.setenv("RAKKA_TEST_KEY", VALUE)
    assert ref.resolve().expose() == VALUE
    assert ref.resolve({"RAKKA_TEST_KEY": "other"}).expose() == "other"
    assert ref.is_available()
    monkeypatch.setenv("RAKKA_TEST_KEY", "rotated")
    assert ref.resolve().expose() == "rotated"  # read each time, never cached


@pytest.mark.parametrize("environ", [{}, {"RAKKA_TEST_KEY": ""}])
def test_missing_env_names_the_variable(environ: dict[str, str]) -> None:
    ref = SecretRef.from_env("RAKKA_TEST_KEY")
    with pytest.raises(SecretError, match="secret env:RAKKA_TEST_KEY is not set"):
        ref.resolve(environ)
    assert not ref.is_available(environ)


def test_from_file_rereads_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(VALUE + "\n")
    ref = SecretRef.from_file(path)
    assert ref.resolve().expose() == VALUE  # surrounding whitespace stripped
    path.write_text("rotated")
    assert ref.resolve().expose() == "rotated"


def test_missing_file_names_the_path_not_a_value(tmp_path: Path) -> None:
    ref = SecretRef.from_file(tmp_path / "absent")
    with pytest.raises(SecretError) as info:
        ref.resolve()
    message = str(info.value)
    assert f"file:{tmp_path / 'absent'}" in message
    assert "No such file" in message
    assert info.value.__cause__ is None  # the OSError is not chained in
    assert not ref.is_available()


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("  \n")
    with pytest.raises(SecretError, match="is empty"):
        SecretRef.from_file(path).resolve()


def test_an_unreadable_file_does_not_leak_its_content(tmp_path: Path) -> None:
    path = tmp_path / "dir-not-file"
    path.mkdir()
    with pytest.raises(SecretError, match="cannot be read") as info:
        SecretRef.from_file(path).resolve()
    assert str(path) in str(info.value)


def test_empty_names_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        SecretRef.from_env("")
    with pytest.raises(ValueError, match="must not be empty"):
        SecretRef.from_file("")


def test_inline_warns_and_hides_its_value() -> None:
    with pytest.warns(InlineSecretWarning):
        ref = SecretRef.inline(VALUE)
    assert ref.resolve().expose() == VALUE
    assert ref.describe() == "inline"
    assert repr(ref) == "SecretRef(inline)"
    assert VALUE not in f"{ref} {ref!r} {[ref]}"
    assert SecretRef.inline(Secret(VALUE), warn=False) == ref


def test_describe_names_the_source() -> None:
    assert SecretRef.from_env("OPENAI_API_KEY").describe() == "env:OPENAI_API_KEY"
    assert SecretRef.from_file("/run/k").describe() == "file:/run/k"
    assert repr(SecretRef.from_env("X")) == "SecretRef(env:X)"


def test_records_holding_inline_secrets_hide_them() -> None:
    key = SecretRef.inline(VALUE, warn=False)
    deployment = Deployment(
        name="d",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(api_key=key, azure_ad_token=key),
    )
    config = Config(
        cluster=ClusterConfig(client_api_keys=(key, key), admin_api_key=key),
        deployments=(deployment,),
    )
    for text in (repr(key), repr(deployment), repr(config), str(config), f"{config!r}"):
        assert VALUE not in text
    assert "SecretRef(inline)" in repr(config)


def test_a_loaded_configuration_hides_inline_secrets() -> None:
    text = (
        '[cluster]\nadmin_api_key = "admin-secret-value"\n'
        '[[deployment]]\nname = "c"\nmodel = "claude-sonnet-4"\n'
        f'[deployment.runtime_config]\napi_key = "{VALUE}"\n'
    )
    with pytest.warns(InlineSecretWarning):
        config = parse_config(text, environ={})
    settings = config.deployments[0].runtime_config
    assert isinstance(settings, AnthropicConfig)
    assert settings.api_key is not None
    assert settings.api_key.resolve().expose() == VALUE
    assert VALUE not in repr(config)
    assert "admin-secret-value" not in repr(config)
    with pytest.raises(SecretError):
        pickle.dumps(config)
