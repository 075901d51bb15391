"""The error hierarchy: one root, the tree in the docstring, classification by attribute."""

from __future__ import annotations

import inspect
import pickle
import re

import pytest

from rakka_inference.core import errors
from rakka_inference.core.errors import (
    ActorDead,
    AskTimeout,
    Backpressure,
    BadRequest,
    BudgetExceeded,
    CircuitOpen,
    ClientUnauthorized,
    ConfigError,
    ConfigIssue,
    Conflict,
    ContentFiltered,
    ContextLengthExceeded,
    ContextPoisoned,
    Forbidden,
    HeadTooLarge,
    IllegalTransition,
    InferenceError,
    InternalError,
    MailboxFull,
    ModelNotFound,
    NetworkError,
    OperationRefused,
    OutOfMemory,
    Overloaded,
    PayloadTooLarge,
    PlacementFailed,
    ProtocolError,
    QuotaExhausted,
    RakkaError,
    RateLimited,
    RateLimitExceeded,
    ReplicaUnavailable,
    RequestCancelled,
    RequestTimedOut,
    RouteNotFound,
    ServerError,
    ShuttingDown,
    StreamInterrupted,
    Timeout,
    TimeoutPhase,
    Unauthorized,
    Unrecoverable,
    UpstreamNotFound,
    UriTooLong,
)

ALL_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]

# (class, retryable, counts_for_breaker, http_status, openai type, openai code)
TABLE: list[tuple[type[InferenceError], bool, bool, int, str, str | None]] = [
    (RateLimited, True, False, 429, "rate_limit_error", "rate_limit_exceeded"),
    (ServerError, True, True, 502, "upstream_error", "upstream_server_error"),
    (Overloaded, True, True, 502, "upstream_error", "upstream_overloaded"),
    (Timeout, True, True, 504, "timeout_error", "upstream_timeout"),
    (NetworkError, True, True, 502, "upstream_error", "upstream_network_error"),
    (ContentFiltered, False, False, 400, "invalid_request_error", "content_filter"),
    (
        ContextLengthExceeded,
        False,
        False,
        400,
        "invalid_request_error",
        "context_length_exceeded",
    ),
    (BadRequest, False, False, 400, "invalid_request_error", None),
    (PayloadTooLarge, False, False, 413, "invalid_request_error", "payload_too_large"),
    (UriTooLong, False, False, 414, "invalid_request_error", "uri_too_long"),
    (HeadTooLarge, False, False, 431, "invalid_request_error", "request_header_fields_too_large"),
    (RequestTimedOut, False, False, 408, "invalid_request_error", "request_timeout"),
    (Unauthorized, False, False, 502, "upstream_error", "upstream_unauthorized"),
    (Forbidden, False, False, 403, "permission_error", "forbidden"),
    (UpstreamNotFound, False, False, 502, "upstream_error", "upstream_not_found"),
    (Conflict, True, False, 502, "upstream_error", "upstream_conflict"),
    (QuotaExhausted, False, False, 429, "insufficient_quota", "insufficient_quota"),
    (ProtocolError, False, True, 502, "upstream_error", "upstream_protocol_error"),
    (ClientUnauthorized, False, False, 401, "authentication_error", "invalid_api_key"),
    (ModelNotFound, False, False, 404, "invalid_request_error", "model_not_found"),
    (RouteNotFound, False, False, 404, "invalid_request_error", "unknown_url"),
    (OperationRefused, False, False, 409, "invalid_request_error", "operation_refused"),
    (IllegalTransition, False, False, 409, "invalid_request_error", "illegal_transition"),
    (PlacementFailed, False, False, 409, "invalid_request_error", "placement_failed"),
    (RateLimitExceeded, False, False, 429, "rate_limit_error", "rate_limit_exceeded"),
    (CircuitOpen, False, False, 503, "service_unavailable", "circuit_open"),
    (Backpressure, False, False, 429, "rate_limit_error", "backpressure"),
    (BudgetExceeded, False, False, 429, "rate_limit_error", "budget_exceeded"),
    (ContextPoisoned, True, False, 503, "server_error", "context_poisoned"),
    (OutOfMemory, True, False, 503, "server_error", "out_of_memory"),
    (ReplicaUnavailable, True, False, 503, "server_error", "replica_unavailable"),
    (Unrecoverable, False, False, 500, "server_error", "engine_unrecoverable"),
    (StreamInterrupted, False, False, 502, "upstream_error", "stream_interrupted"),
    (RequestCancelled, False, False, 499, "request_cancelled", "cancelled"),
    (ShuttingDown, False, False, 503, "service_unavailable", "shutting_down"),
    (InternalError, False, False, 500, "server_error", "internal_error"),
]


def test_every_error_has_one_root() -> None:
    assert len(ALL_CLASSES) > 30
    for klass in ALL_CLASSES:
        assert issubclass(klass, RakkaError), klass


def test_the_docstring_tree_names_every_class() -> None:
    doc = errors.__doc__
    assert doc is not None
    tree = doc[doc.index("RakkaError") :]
    drawn = set(re.findall(r"[├└]── (\w+)", tree)) | {"RakkaError"}
    defined = {klass.__name__ for klass in ALL_CLASSES}
    assert drawn == defined


@pytest.mark.parametrize(("klass", "retry", "breaker", "status", "kind", "code"), TABLE)
def test_classification_attributes(
    klass: type[InferenceError],
    retry: bool,
    breaker: bool,
    status: int,
    kind: str,
    code: str | None,
) -> None:
    assert klass.retryable is retry
    assert klass.counts_for_breaker is breaker
    assert klass.http_status == status
    assert klass.openai_type == kind
    assert klass.openai_code == code


def test_table_covers_every_concrete_inference_error() -> None:
    abstract = {
        "InferenceError",
        "RequestError",
        "UpstreamError",
        "Refused",
        "EngineError",
    }
    covered = {row[0].__name__ for row in TABLE}
    concrete = {
        k.__name__
        for k in ALL_CLASSES
        if issubclass(k, InferenceError) and k.__name__ not in abstract
    }
    assert covered == concrete


def test_openai_error_body() -> None:
    error = BadRequest("temperature must be <= 2", param="temperature")
    assert error.to_openai_error() == {
        "error": {
            "message": "temperature must be <= 2",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        }
    }


def test_instances_carry_context() -> None:
    error = RateLimited("slow down", provider="openai", retry_after=1.5, upstream_status=429)
    assert error.retry_after == 1.5
    assert str(error) == "slow down"
    assert repr(error) == (
        "RateLimited('slow down', provider='openai', retry_after=1.5, upstream_status=429)"
    )
    timeout = Timeout("no first byte in 30s", phase=TimeoutPhase.FIRST_BYTE, provider="x")
    assert timeout.phase is TimeoutPhase.FIRST_BYTE
    opened = CircuitOpen("open", provider="anthropic", opened_at=10.0, retry_at=40.0)
    assert (opened.opened_at, opened.retry_at) == (10.0, 40.0)
    assert repr(InternalError("bug")) == "InternalError('bug')"


def test_actor_errors() -> None:
    assert str(MailboxFull("/a", 3)) == "mailbox of /a is full (3 messages)"
    timeout = AskTimeout("/a", 0.5)
    assert isinstance(timeout, TimeoutError)
    assert str(timeout) == "/a did not reply within 0.5 s"
    assert str(ActorDead("/a")) == "/a: actor is stopped"


def test_config_error_lists_every_issue() -> None:
    issues = [
        ConfigIssue("a.toml", "deployment[0].replicas", "must be >= 1", line=7),
        ConfigIssue("a.toml", "", "no line known"),
    ]
    error = ConfigError(issues)
    assert error.issues == tuple(issues)
    assert str(error).splitlines() == [
        "2 configuration errors",
        "  a.toml:7: deployment[0].replicas: must be >= 1",
        "  a.toml: no line known",
    ]
    assert str(ConfigError(issues[:1])).startswith("1 configuration error\n")


def test_outcome_labels_follow_design_section_6() -> None:
    assert RateLimited.outcome == "rate_limited"
    assert ServerError.outcome == "server_error"
    assert ContentFiltered.outcome == "content_filtered"
    assert Timeout.outcome == "timed_out"
    assert CircuitOpen.outcome == "circuit_open"
    assert Backpressure.outcome == "backpressure"
    assert BudgetExceeded.outcome == "budget_exceeded"
    assert RequestCancelled("x").outcome == "request_cancelled"
    assert InferenceError.outcome == "inference_error"


@pytest.mark.parametrize(
    "klass", [k for k in ALL_CLASSES if issubclass(k, InferenceError)], ids=lambda k: k.__name__
)
def test_every_inference_error_crosses_a_process_boundary_whole(
    klass: type[InferenceError],
) -> None:
    """Pickled and back (as a Ray call carries it): same class, message and attributes,
    whatever its own constructor requires."""
    error = klass.__new__(klass)
    InferenceError.__init__(error, "it broke", provider="openai", retry_after=2.5, param="x")
    error.extra = "kept"  # type: ignore[attr-defined]
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is klass
    assert str(back) == "it broke"
    assert (back.message, back.provider, back.retry_after, back.param) == (
        "it broke",
        "openai",
        2.5,
        "x",
    )
    assert back.extra == "kept"
    assert back.to_openai_error() == error.to_openai_error()
