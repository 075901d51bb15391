"""The one sanitizer of upstream text: what a client may read of an upstream's error (no key
material, URLs or hostnames, bounded) and what an operator reads in the log (the whole
message, key material masked)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from rakka_inference.core.errors import Unauthorized
from rakka_inference.wire.classify import classify_http_error, upstream_log_text
from rakka_inference.wire.redact import (
    MAX_UPSTREAM_MESSAGE_CHARS,
    REDACTED,
    error_label,
    redact_secrets,
    sanitize_upstream_message,
)

OPENAI_401 = (
    "Incorrect API key provided: sk-pr***wxyz. "
    "You can find your API key at https://platform.openai.com/account/api-keys."
)


@pytest.mark.parametrize(
    ("upstream", "cleaned"),
    [
        # OpenAI quotes the key's first three and last four characters.
        (
            OPENAI_401,
            f"Incorrect API key provided: {REDACTED}. You can find your API key at {REDACTED}.",
        ),
        ("Incorrect API key provided: sk-abc…wxyz", f"Incorrect API key provided: {REDACTED}"),
        ("Incorrect API key provided: sk-abc...wxyz.", f"Incorrect API key provided: {REDACTED}."),
        ("bad key abc*********wxyz here", f"bad key {REDACTED} here"),
        ("Incorrect API key provided: 0123456789abcdef", f"Incorrect API key provided: {REDACTED}"),
        # Anthropic and OpenAI keys, whole.
        ("invalid x-api-key sk-ant-api03-AbC_dEf-123", f"invalid x-api-key {REDACTED}"),
        ("key sk-proj-AbCdEf0123456789 revoked", f"key {REDACTED} revoked"),
        # Gemini keys and Google access tokens.
        (
            "API key not valid: AIzaSyD-abcdefghijklmnopqrstuvwxyz12345. Please pass a valid key.",
            f"API key not valid: {REDACTED}. Please pass a valid key.",
        ),
        ("token ya29.a0AfH6SMB-xyz expired", f"token {REDACTED} expired"),
        ("x-goog-api-key=abcdef123456, retry", f"x-goog-api-key={REDACTED}, retry"),
        # Bearer tokens and JWTs.
        ("Authorization: Bearer abc.DEF-123_x/y+z=", f"Authorization: Bearer {REDACTED}"),
        ("jwt eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl ok", f"jwt {REDACTED} ok"),
        # URLs, of any scheme, with the sentence's punctuation kept.
        ("see http://10.1.2.3:8080/v1/chat?key=AIzaXYZ123456789.", f"see {REDACTED}."),
        ("at (https://api.internal.example/v1)", f"at ({REDACTED})"),
        ("wss://gw.corp/x failed", f"{REDACTED} failed"),
        # Bare hostnames and addresses, with their ports.
        ("myresource.openai.azure.com timed out", f"{REDACTED} timed out"),
        ("connect to 127.0.0.1:8443 refused", f"connect to {REDACTED} refused"),
        ("upstream [::1]:8443 reset", f"upstream {REDACTED} reset"),
        ("proxy localhost:3128 and gw-1.svc.cluster.local", f"proxy {REDACTED} and {REDACTED}"),
        ("backend llm-proxy.prod:9000 down", f"backend {REDACTED} down"),
    ],
)
def test_key_material_urls_and_hosts_are_redacted(upstream: str, cleaned: str) -> None:
    assert sanitize_upstream_message(upstream) == cleaned


@pytest.mark.parametrize(
    "upstream",
    [
        "This model's maximum context length is 8192 tokens.",
        "Invalid type for 'messages[1].content[0].text': expected a string.",
        "messages.0.content: Input should be a valid list",
        "tools[0].function.name is required",
        "models/gemini-1.5-pro is not found for API version v1beta",
        "Resource has been exhausted (e.g. check quota).",
        "max_tokens: Field required",
        "Please pass a valid API key.",
        "request req_011CKx8 failed; try again...",
    ],
)
def test_ordinary_messages_pass_unchanged(upstream: str) -> None:
    assert sanitize_upstream_message(upstream) == upstream


def test_a_secret_we_sent_is_redacted_whatever_its_shape() -> None:
    secret = "opaque-credential-7f3a"
    text = f"unknown credential {secret}; {secret}!"
    assert (
        sanitize_upstream_message(text, (secret,)) == f"unknown credential {REDACTED}; {REDACTED}!"
    )
    assert redact_secrets(text, (secret,)) == f"unknown credential {REDACTED}; {REDACTED}!"
    # Too short to search for without redacting ordinary words.
    assert sanitize_upstream_message("the key", ("key",)) == "the key"


def test_control_characters_go_and_the_length_is_bounded() -> None:
    assert sanitize_upstream_message("a\x00b\n\n c\td") == "a b c d"
    cleaned = sanitize_upstream_message("x" * 5000)
    assert len(cleaned) == MAX_UPSTREAM_MESSAGE_CHARS
    assert cleaned.endswith("…")


def test_a_key_at_the_cut_is_redacted_before_it_is_cut() -> None:
    key = "sk-proj-" + "A1b2C3d4" * 8
    cleaned = sanitize_upstream_message("x" * (MAX_UPSTREAM_MESSAGE_CHARS - 20) + " " + key)
    assert "sk-" not in cleaned
    assert "A1b2" not in cleaned


@pytest.mark.parametrize(
    "hostile",
    ["a." * 100_000, "a" * 300_000, "*" * 300_000, "sk-" * 100_000, "1." * 100_000, "[" * 10**5],
)
def test_hostile_text_is_scanned_in_linear_time(hostile: str) -> None:
    # A correctness guard against catastrophic backtracking, not a speed target: each of
    # these takes milliseconds, a quadratic scan minutes.
    started = time.perf_counter()
    sanitize_upstream_message(hostile)
    redact_secrets(hostile)
    assert time.perf_counter() - started < 10


def test_the_log_keeps_urls_and_hosts_and_masks_the_key() -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": OPENAI_401 + " Host myresource.openai.azure.com, 127.0.0.1:8443."
                " Authorization: Bearer tok-123456",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    )
    logged = upstream_log_text(body, ("sk-proj-real-key-wxyz",))
    assert logged == (
        f"Incorrect API key provided: {REDACTED}. You can find your API key at "
        "https://platform.openai.com/account/api-keys. Host myresource.openai.azure.com, "
        f"127.0.0.1:8443. Authorization: Bearer {REDACTED}"
    )
    assert upstream_log_text(b"<html>502</html>") is None
    assert upstream_log_text(b"") is None


def test_the_log_is_bounded_too() -> None:
    logged = upstream_log_text(orjson.dumps({"error": {"message": "y" * 100_000}}))
    assert logged is not None
    assert MAX_UPSTREAM_MESSAGE_CHARS < len(logged) <= 4096


@pytest.mark.parametrize(
    ("kind", "code", "label"),
    [
        ("invalid_request_error", "invalid_api_key", "invalid_request_error, invalid_api_key"),
        ("overloaded_error", None, "overloaded_error"),
        ("UNAUTHENTICATED", 401, "UNAUTHENTICATED"),  # a numeric code repeats the status
        ("context_length_exceeded", "context_length_exceeded", "context_length_exceeded"),
        ("see https://x.example", "sk-abc", "sk-abc"),
        (None, "401", ""),
        ("x" * 65, None, ""),
    ],
)
def test_error_label_shows_identifiers_only(kind: Any, code: Any, label: str) -> None:
    assert error_label(kind, code) == label


# --------------------------------------------------------------------------- classification


def classify(status: int, body: object, **kw: Any) -> Any:
    return classify_http_error(status, {}, orjson.dumps(body), now=0.0, **kw)


def test_an_openai_401_names_type_and_code_and_quotes_no_key() -> None:
    body = {
        "error": {
            "message": OPENAI_401,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    error = classify(401, body, provider="openai")
    assert type(error) is Unauthorized
    assert error.message == (
        "openai returned HTTP 401 Unauthorized (invalid_request_error, invalid_api_key): "
        f"Incorrect API key provided: {REDACTED}. You can find your API key at {REDACTED}."
    )


def test_gemini_status_is_its_error_type() -> None:
    body = [
        {
            "error": {
                "code": 400,
                "message": "API key not valid: AIzaSyD-abcdefghijklmnop. See "
                "https://generativelanguage.googleapis.com/v1beta/models",
                "status": "INVALID_ARGUMENT",
            }
        }
    ]
    error = classify(400, body, provider="gemini")
    assert error.message == (
        "gemini returned HTTP 400 Bad Request (INVALID_ARGUMENT): "
        f"API key not valid: {REDACTED}. See {REDACTED}"
    )


def test_the_secrets_we_sent_are_redacted_from_the_message() -> None:
    body = {"error": {"message": "token plain-opaque-token-99 is revoked"}}
    error = classify(401, body, provider="custom", secrets=("plain-opaque-token-99",))
    assert "plain-opaque-token-99" not in error.message
    assert error.message.endswith(f": token {REDACTED} is revoked")


def test_a_type_that_is_not_an_identifier_is_left_out() -> None:
    body = {"error": {"message": "no", "type": "see api.example.com", "code": "x y"}}
    assert classify(400, body, provider="p").message == "p returned HTTP 400 Bad Request: no"
