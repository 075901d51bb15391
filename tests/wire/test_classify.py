"""HTTP error classification and Retry-After parsing, provider-neutral."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rakka_inference.core.errors import (
    BadRequest,
    Conflict,
    ContentFiltered,
    ContextLengthExceeded,
    Forbidden,
    InferenceError,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    ServerError,
    Timeout,
    TimeoutPhase,
    Unauthorized,
    UpstreamNotFound,
)
from rakka_inference.wire.classify import classify_http_error, upstream_error
from rakka_inference.wire.redact import MAX_UPSTREAM_MESSAGE_CHARS, printable
from rakka_inference.wire.retry_after import parse_duration, retry_after_seconds

NOW = 1_700_000_000.0


def classify(
    status: int,
    body: bytes | dict[str, Any] | list[Any] = b"",
    headers: dict[str, str] | None = None,
    provider: str | None = "openai",
) -> InferenceError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_http_error(status, headers or {}, raw, provider=provider, now=NOW)


def openai_error(
    message: str, code: str | None = None, type_: str = "invalid_request_error"
) -> dict[str, Any]:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, UpstreamNotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (418, BadRequest),
        (422, BadRequest),
        (429, RateLimited),
        (451, BadRequest),
        (500, ServerError),
        (501, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (520, ServerError),
        (529, Overloaded),
        (599, ServerError),
    ],
)
def test_each_status_maps_to_its_error(status: int, kind: type[InferenceError]) -> None:
    error = classify(status)
    assert type(error) is kind
    assert error.upstream_status == status
    assert error.provider == "openai"
    assert str(status) in error.message


def test_408_is_a_first_byte_timeout_on_the_retry_path() -> None:
    error = classify(408)
    assert isinstance(error, Timeout)
    assert error.phase is TimeoutPhase.FIRST_BYTE
    assert error.retryable
    assert error.counts_for_breaker
    assert error.upstream_status == 408


@pytest.mark.parametrize("status", [200, 204, 302, 399, 600, 999])
def test_a_status_outside_the_error_range_is_a_protocol_error(status: int) -> None:
    error = classify(status)
    assert type(error) is ProtocolError
    assert "not an error status" in error.message


def test_message_names_provider_status_and_reason() -> None:
    assert classify(503, provider="anthropic").message == (
        "anthropic returned HTTP 503 Service Unavailable"
    )
    assert classify(529, provider=None).message == "upstream returned HTTP 529"


# --------------------------------------------------------------------------- bodies


def test_openai_context_length_by_structured_code() -> None:
    body = openai_error(
        "This model's maximum context length is 8192 tokens.", "context_length_exceeded"
    )
    body["error"]["param"] = "messages"
    error = classify(400, body)
    assert type(error) is ContextLengthExceeded
    assert error.param == "messages"
    assert error.message == (
        "openai returned HTTP 400 Bad Request (invalid_request_error, context_length_exceeded): "
        "This model's maximum context length is 8192 tokens."
    )


def test_context_length_by_error_type_field() -> None:
    error = classify(400, {"error": {"type": "context_length_exceeded", "message": "too long"}})
    assert type(error) is ContextLengthExceeded


def test_azure_content_filter_by_structured_code() -> None:
    body = {
        "error": {
            "message": "The response was filtered due to the prompt triggering a content policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation"},
        }
    }
    error = classify(400, body, provider="azure")
    assert type(error) is ContentFiltered
    assert error.param == "prompt"


def test_structured_detection_also_applies_to_other_4xx() -> None:
    assert type(classify(422, openai_error("x", "context_length_exceeded"))) is (
        ContextLengthExceeded
    )


def test_free_text_never_classifies() -> None:
    error = classify(400, openai_error("context_length_exceeded; content_filter tripped"))
    assert type(error) is BadRequest


def test_structured_codes_do_not_override_non_400_statuses() -> None:
    assert type(classify(429, openai_error("x", "context_length_exceeded"))) is RateLimited
    assert type(classify(500, openai_error("x", "content_filter"))) is ServerError


def test_anthropic_error_shape() -> None:
    body = {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_011",
    }
    error = classify(529, body, provider="anthropic")
    assert type(error) is Overloaded
    assert error.message == "anthropic returned HTTP 529 (overloaded_error): Overloaded"
    assert error.param is None


def test_overloaded_type_on_another_5xx() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert type(classify(503, body, provider="anthropic")) is Overloaded


def test_anthropic_invalid_request() -> None:
    body = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    error = classify(400, body, provider="anthropic")
    assert type(error) is BadRequest
    assert error.message.endswith(": max_tokens: Field required")


def test_gemini_error_shape_and_its_list_wrapper() -> None:
    error_object = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    for body in (error_object, [error_object]):
        error = classify(429, body, provider="gemini")
        assert type(error) is RateLimited
        assert error.message.endswith(": Resource has been exhausted (e.g. check quota).")


@pytest.mark.parametrize(
    ("body", "suffix"),
    [
        ({"error": "model overloaded"}, ": model overloaded"),
        ({"message": "upstream said no"}, ": upstream said no"),
        ('"plain json string"', ": plain json string"),
        (
            b"upstream connect error or disconnect/reset",
            ": upstream connect error or disconnect/reset",
        ),
        (b"  spaced\n\n  out\ttext\x00  ", ": spaced out text"),
    ],
)
def test_other_body_shapes_give_their_text(body: object, suffix: str) -> None:
    raw = body.encode() if isinstance(body, str) else body
    error = classify(502, raw)  # type: ignore[arg-type]
    assert error.message.endswith(suffix)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        b"[]",
        b"42",
        b"null",
        b"{}",
        b'{"error": {"code": 500}}',
        b'{"error": {"message": ""}}',
        b'{"error": {"message": " \\n "}}',
    ],
)
def test_bodies_without_a_message_leave_only_the_head(body: bytes) -> None:
    assert classify(502, body).message == "openai returned HTTP 502 Bad Gateway"


@pytest.mark.parametrize(
    ("body", "quoted"),
    [
        (b"\xff\xfe{", "\ufffd\ufffd{"),
        (b"[" * 100_000, "[" * (MAX_UPSTREAM_MESSAGE_CHARS - 1) + "…"),
        (b'{"error": {"message": "big"}}' + b" " * (300 * 1024), '{"error": {"message": "big"}}'),
    ],
)
def test_bodies_that_are_not_json_are_quoted_as_text(body: bytes, quoted: str) -> None:
    assert classify(502, body).message == f"openai returned HTTP 502 Bad Gateway: {quoted}"


def test_long_upstream_messages_are_truncated() -> None:
    error = classify(400, openai_error("x" * 5000))
    quoted = error.message.split(": ", 1)[1]
    assert len(quoted) == MAX_UPSTREAM_MESSAGE_CHARS
    assert quoted.endswith("…")


def test_headers_never_reach_the_message() -> None:
    headers = {"Authorization": "Bearer sk-secret", "x-request-id": "req-123"}
    error = classify(500, openai_error("boom"), headers=headers)
    assert "sk-secret" not in error.message
    assert "req-123" not in error.message
    assert "sk-secret" not in repr(error)


def test_retry_after_is_set_on_the_error() -> None:
    error = classify(429, headers={"Retry-After": "7"})
    assert error.retry_after == 7.0
    assert classify(503, headers={"retry-after": "2"}).retry_after == 2.0
    assert classify(400).retry_after is None


def test_rate_limit_reset_headers_only_mean_wait_on_a_429() -> None:
    headers = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s"}
    assert classify(429, headers=headers).retry_after == 360.0
    assert classify(503, headers=headers).retry_after is None


# --------------------------------------------------------------------------- retry-after


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250.5"}, 0.2505),
        ({"retry-after-ms": "1500", "retry-after": "30"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "30"}, 30.0),
        ({"Retry-After": "120"}, 120.0),
        ({"RETRY-AFTER": "0"}, 0.0),
        ({"retry-after": " 1.25 "}, 1.25),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "+5"}, None),
        ({"retry-after": "1e3"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "1_000"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "tomorrow"}, None),
        ({"retry-after-ms": "-1"}, None),
        ({}, None),
        ({"x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "garbage", "x-ratelimit-reset-tokens": "0.5s"}, 0.5),
        ({"x-ratelimit-reset-requests": "garbage"}, None),
        ({"retry-after": "garbage", "x-ratelimit-reset-tokens": "3s"}, 3.0),
        ({"retry-after": "4", "x-ratelimit-reset-tokens": "3m"}, 4.0),
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    result = retry_after_seconds(headers, NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_retry_after_http_date() -> None:
    future = format_datetime(datetime.fromtimestamp(NOW + 90, tz=UTC), usegmt=True)
    assert retry_after_seconds({"Retry-After": future}, NOW) == pytest.approx(90.0)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    past = format_datetime(datetime.fromtimestamp(NOW - 3600, tz=UTC), usegmt=True)
    assert retry_after_seconds({"Retry-After": past}, NOW) == 0.0


def test_retry_after_http_date_without_zone_is_utc() -> None:
    # RFC 2822 "-0000" means "no zone information": parsed naive, read as UTC.
    when = datetime.fromtimestamp(NOW + 30, tz=UTC).strftime("%a, %d %b %Y %H:%M:%S -0000")
    assert retry_after_seconds({"Retry-After": when}, NOW) == pytest.approx(30.0)


def test_retry_after_garbage_date_is_none() -> None:
    assert retry_after_seconds({"Retry-After": "Wed, 99 Foo 2024 25:61:61 GMT"}, NOW) is None


def test_rate_limit_reset_can_be_left_out() -> None:
    headers = {"x-ratelimit-reset-requests": "1s"}
    assert retry_after_seconds(headers, NOW, rate_limit_reset=False) is None


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("0.5s", 0.5),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("7m12s", 432.0),
        ("300ns", 3e-7),
        ("2us", 2e-6),
        ("2µs", 2e-6),
        ("2μs", 2e-6),
        (".5s", 0.5),
        ("1m30ms", 60.03),
        ("0", 0.0),
        ("0s", 0.0),
        (" 2s ", 2.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "s",
        "1",
        "-1s",
        "+1s",
        "1 s",
        "1s 2m",
        "1d",
        "1sec",
        "abc",
        "1.2.3s",
        "1" * 80 + "s",
    ],
)
def test_parse_duration_rejects_garbage(text: str | None) -> None:
    assert parse_duration(text) is None


@given(st.text(max_size=200))
def test_parse_duration_never_raises(text: str) -> None:
    result = parse_duration(text)
    assert result is None or result >= 0.0


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "retry-after",
                "Retry-After",
                "retry-after-ms",
                "x-ratelimit-reset-requests",
                "x-ratelimit-reset-tokens",
                "x-other",
            ]
        ),
        st.text(max_size=80),
    ),
    st.floats(min_value=0, max_value=4e9),
)
def test_retry_after_never_raises(headers: dict[str, str], now: float) -> None:
    result = retry_after_seconds(headers, now)
    assert result is None or result >= 0.0


@given(st.text(max_size=80).map(lambda text: "Wed, " + text))
def test_retry_after_never_raises_on_date_like_text(value: str) -> None:
    result = retry_after_seconds({"retry-after": value}, NOW)
    assert result is None or result >= 0.0


@given(st.integers(min_value=0, max_value=999), st.binary(max_size=200))
def test_classify_never_raises(status: int, body: bytes) -> None:
    assert isinstance(classify_http_error(status, {}, body, provider=None, now=NOW), InferenceError)


def test_upstream_error_makes_a_timeout_one_of_the_first_byte_without_a_param() -> None:
    error = upstream_error(
        Timeout, "slow", provider="gemini", retry_after=2.0, param="x", upstream_status=504
    )
    assert isinstance(error, Timeout)
    assert error.phase is TimeoutPhase.FIRST_BYTE
    assert (error.provider, error.retry_after, error.param, error.upstream_status) == (
        "gemini",
        2.0,
        None,
        504,
    )


def test_upstream_error_keeps_the_param_of_other_kinds() -> None:
    error = upstream_error(BadRequest, "bad", provider="gemini", retry_after=None, param="x")
    assert type(error) is BadRequest
    assert (error.message, error.param, error.upstream_status) == ("bad", "x", None)


def test_printable_turns_control_characters_and_whitespace_runs_into_one_space() -> None:
    assert printable("  a\x00b\n\tc   d ") == "a b c d"
