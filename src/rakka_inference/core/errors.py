"""Every error rakka-inference raises, under one root.

Classification lives on class attributes, never on message text:

- ``retryable``: the remote engine may try the same request again (before the first byte
  has reached the client, and only when the deployment is idempotent);
- ``counts_for_breaker``: the failure is evidence that the upstream is unhealthy and is
  counted by its circuit breaker;
- ``http_status``: the status the gateway answers with;
- ``openai_type`` / ``openai_code``: the ``error.type`` and ``error.code`` of the
  OpenAI-style JSON error body.

The tree::

    RakkaError
    ├── ConfigError                  configuration rejected; carries every issue found
    ├── SecretError                  a secret could not be resolved, or was about to leak
    ├── ActorError                   the actor kernel
    │   ├── MailboxFull              a bounded mailbox refused a message
    │   ├── AskTimeout               no reply within the ask timeout
    │   └── ActorDead                the actor stopped before it could answer
    └── InferenceError               serving a request          retry  breaker  status
        ├── RequestError             the client's request is at fault
        │   ├── BadRequest                                       no     no       400
        │   │   ├── ContextLengthExceeded                        no     no       400
        │   │   ├── ContentFiltered                              no     no       400
        │   │   ├── PayloadTooLarge                              no     no       413
        │   │   ├── UriTooLong       the request line passes its limit   no  no  414
        │   │   └── HeadTooLarge     a header, or all of them, too long  no  no  431
        │   ├── RequestTimedOut      its head or body came too slowly    no  no  408
        │   ├── ClientUnauthorized   missing or bad client key   no     no       401
        │   ├── ModelNotFound        no deployment or alias      no     no       404
        │   ├── RouteNotFound        no such URL on the gateway  no     no       404
        │   └── OperationRefused     the deployment's state forbids it   no  no  409
        │       ├── IllegalTransition  a lifecycle move the table refuses  no no 409
        │       └── PlacementFailed  no node can take the replica    no     no       409
        ├── UpstreamError            the provider (or engine) answered badly
        │   ├── RateLimited          429                         yes    no       429
        │   ├── ServerError          5xx                         yes    yes      502
        │   │   └── Overloaded       529, overloaded_error       yes    yes      502
        │   ├── Timeout              connect/first byte/read     yes    yes      504
        │   ├── NetworkError         connect refused, reset      yes    yes      502
        │   ├── Unauthorized         401: rebuild session, once  no     no       502
        │   ├── Forbidden            403                         no     no       403
        │   ├── UpstreamNotFound     404 from the provider       no     no       502
        │   ├── Conflict             409                         yes    no       502
        │   ├── QuotaExhausted       billing quota used up       no     no       429
        │   └── ProtocolError        malformed response/stream   no     yes      502
        ├── Refused                  we declined before calling upstream
        │   ├── RateLimitExceeded    no permit in time                   no  no  429
        │   ├── CircuitOpen          breaker open: fail fast             no  no  503
        │   ├── Backpressure         queue full or queue wait over       no  no  429
        │   └── BudgetExceeded       spend limit reached                 no  no  429
        ├── EngineError              a local engine's runner failed
        │   ├── ContextPoisoned      rebuild the context             yes    no       503
        │   ├── OutOfMemory          resume; retry elsewhere         yes    no       503
        │   ├── ReplicaUnavailable   its process or node is gone     yes    no       503
        │   └── Unrecoverable        stop the replica                no     no       500
        ├── StreamInterrupted        failed after the first byte: no retry   no  no  502
        ├── RequestCancelled         we closed it (client went away)         no  no  499
        ├── ShuttingDown             we closed it: the grace period ran out  no  no  503
        └── InternalError            a bug of ours                           no  no  500

Notes on the choices:

- A 401 or 404 from a provider is *our* credential or *our* deployment being wrong, not
  the client's, so the gateway answers 502 rather than passing the status through. A 403
  is surfaced as is (DESIGN §2).
- ``RateLimited`` does not count for the circuit breaker: a 429 feeds the rate limiter's
  auto-tune instead (DESIGN §3, breaker row).
- Retry classification of ``Refused`` errors is ``False``: they are decisions, and the
  RequestActor answers them with a *fallback* to another deployment, not a retry.
- ``RequestCancelled`` ("we closed it") and ``StreamInterrupted`` / ``NetworkError``
  ("it broke") are kept apart on purpose.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "RakkaError",
    "ConfigError",
    "ConfigIssue",
    "SecretError",
    "ActorError",
    "MailboxFull",
    "AskTimeout",
    "ActorDead",
    "InferenceError",
    "RequestError",
    "BadRequest",
    "ContextLengthExceeded",
    "ContentFiltered",
    "PayloadTooLarge",
    "UriTooLong",
    "HeadTooLarge",
    "RequestTimedOut",
    "ClientUnauthorized",
    "ModelNotFound",
    "RouteNotFound",
    "OperationRefused",
    "IllegalTransition",
    "PlacementFailed",
    "UpstreamError",
    "RateLimited",
    "ServerError",
    "Overloaded",
    "Timeout",
    "TimeoutPhase",
    "NetworkError",
    "Unauthorized",
    "Forbidden",
    "UpstreamNotFound",
    "Conflict",
    "QuotaExhausted",
    "ProtocolError",
    "Refused",
    "RateLimitExceeded",
    "CircuitOpen",
    "Backpressure",
    "BudgetExceeded",
    "EngineError",
    "ContextPoisoned",
    "OutOfMemory",
    "ReplicaUnavailable",
    "Unrecoverable",
    "StreamInterrupted",
    "RequestCancelled",
    "ShuttingDown",
    "InternalError",
]


class RakkaError(Exception):
    """The root of every error this package raises."""


def _snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a configuration file.

    ``path`` is the field path inside the document, such as
    ``deployment[0].runtime_config.retry.max_retries``; ``line`` is 1-based when known.
    """

    source: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(RakkaError):
    """A configuration was rejected. ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        count = len(self.issues)
        head = f"{count} configuration error{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  {issue}" for issue in self.issues)]))


class SecretError(RakkaError):
    """A secret could not be resolved, or an operation would have exposed its value.

    The message names the secret's *source* (``env:NAME``, ``file:PATH``), never its value.
    """


# --------------------------------------------------------------------------- actors


class ActorError(RakkaError):
    """Errors of the actor kernel."""


class MailboxFull(ActorError):
    """A bounded mailbox refused a message. Nothing was enqueued."""

    def __init__(self, path: str, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        super().__init__(f"mailbox of {path} is full ({capacity} messages)")


class AskTimeout(ActorError, TimeoutError):
    """An ask got no reply within its timeout."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        super().__init__(f"{path} did not reply within {timeout:g} s")


class ActorDead(ActorError):
    """The actor is stopped (or stopped before it could answer)."""

    def __init__(self, path: str, reason: str = "actor is stopped") -> None:
        self.path = path
        super().__init__(f"{path}: {reason}")


# --------------------------------------------------------------------------- inference


def _rebuild(cls: type[InferenceError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InferenceError(RakkaError):
    """Base of every error met while serving a request.

    Subclasses set the classification as class attributes. Instances carry the message and,
    where known, the provider and the number of seconds after which a retry makes sense.
    """

    retryable: ClassVar[bool] = False
    counts_for_breaker: ClassVar[bool] = False
    http_status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"
    openai_code: ClassVar[str | None] = None
    outcome: ClassVar[str] = "inference_error"
    """The request-outcome label for metrics and logs: the class name in snake case
    (``RateLimited`` → ``rate_limited``) unless a class sets its own."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "outcome" not in cls.__dict__:
            cls.outcome = _snake_case(cls.__name__)

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.retry_after = retry_after
        self.param = param
        self.upstream_status = upstream_status

    def __reduce__(self) -> tuple[Any, ...]:
        # Whole across a process boundary (a Ray call): rebuilt from its message and
        # attributes, never through a subclass's own __init__ and its required arguments.
        return (_rebuild, (type(self), self.args, self.__dict__))

    def to_openai_error(self) -> dict[str, Any]:
        """The OpenAI-style JSON error body for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.openai_type,
                "param": self.param,
                "code": self.openai_code,
            }
        }

    def __repr__(self) -> str:
        extras = "".join(
            f", {name}={value!r}"
            for name, value in (
                ("provider", self.provider),
                ("retry_after", self.retry_after),
                ("param", self.param),
                ("upstream_status", self.upstream_status),
            )
            if value is not None
        )
        return f"{type(self).__name__}({self.message!r}{extras})"


class RequestError(InferenceError):
    """The client's request is at fault; retrying it unchanged cannot help."""

    http_status = 400
    openai_type = "invalid_request_error"


class BadRequest(RequestError):
    http_status = 400
    openai_type = "invalid_request_error"


class ContextLengthExceeded(BadRequest):
    openai_code = "context_length_exceeded"


class ContentFiltered(BadRequest):
    openai_code = "content_filter"


class PayloadTooLarge(BadRequest):
    http_status = 413
    openai_code = "payload_too_large"


class UriTooLong(BadRequest):
    """The request line is longer than the server reads (RFC 9110 §15.5.15)."""

    http_status = 414
    openai_code = "uri_too_long"


class HeadTooLarge(BadRequest):
    """A header line, or the request's head as a whole, is longer than the server reads
    (RFC 6585 §5)."""

    http_status = 431
    openai_code = "request_header_fields_too_large"


class RequestTimedOut(RequestError):
    """The request's head or body did not arrive in the time the server gives it."""

    http_status = 408
    openai_code = "request_timeout"


class ClientUnauthorized(RequestError):
    """The caller's API key for this gateway is missing or wrong."""

    http_status = 401
    openai_type = "authentication_error"
    openai_code = "invalid_api_key"


class ModelNotFound(RequestError):
    """No deployment or alias serves the requested model."""

    http_status = 404
    openai_code = "model_not_found"


class RouteNotFound(RequestError):
    """The gateway has no such route (OpenAI answers ``Invalid URL (METHOD /path)``)."""

    http_status = 404
    openai_code = "unknown_url"


class OperationRefused(RequestError):
    """An operator's request (admin API, CLI) that the deployment's state does not allow."""

    http_status = 409
    openai_code = "operation_refused"


class IllegalTransition(OperationRefused):
    """A lifecycle transition the state table does not have (e.g. stopped -> serving)."""

    openai_code = "illegal_transition"


class PlacementFailed(OperationRefused):
    """No node can take a replica: not enough free GPUs, no egress node. Says why."""

    openai_code = "placement_failed"


class UpstreamError(InferenceError):
    """The provider or engine answered badly."""

    http_status = 502
    openai_type = "upstream_error"


class RateLimited(UpstreamError):
    """The provider answered 429. Feeds the limiter's auto-tune, not the breaker."""

    retryable = True
    http_status = 429
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"


class ServerError(UpstreamError):
    retryable = True
    counts_for_breaker = True
    openai_code = "upstream_server_error"


class Overloaded(ServerError):
    """Anthropic's 529 ``overloaded_error`` and equivalents."""

    openai_code = "upstream_overloaded"


class TimeoutPhase(enum.Enum):
    """Which deadline expired. Each has its own setting (DESIGN §4, ``timeouts``)."""

    CONNECT = "connect"
    FIRST_BYTE = "first_byte"
    BETWEEN_BYTES = "between_bytes"
    TOTAL = "total"
    DEADLINE = "deadline"


class Timeout(UpstreamError):
    outcome = "timed_out"
    retryable = True
    counts_for_breaker = True
    http_status = 504
    openai_type = "timeout_error"
    openai_code = "upstream_timeout"

    def __init__(
        self,
        message: str,
        *,
        phase: TimeoutPhase,
        provider: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            retry_after=retry_after,
            param=param,
            upstream_status=upstream_status,
        )
        self.phase = phase


class NetworkError(UpstreamError):
    retryable = True
    counts_for_breaker = True
    openai_code = "upstream_network_error"


class Unauthorized(UpstreamError):
    """The provider rejected our credential. The session is rebuilt and the request retried once."""

    openai_code = "upstream_unauthorized"


class Forbidden(UpstreamError):
    http_status = 403
    openai_type = "permission_error"
    openai_code = "forbidden"


class UpstreamNotFound(UpstreamError):
    openai_code = "upstream_not_found"


class Conflict(UpstreamError):
    retryable = True
    openai_code = "upstream_conflict"


class QuotaExhausted(UpstreamError):
    """The account's quota or credit is used up (OpenAI ``insufficient_quota``).

    A 429 on the wire, but retrying cannot help: it is not retried, and it does not lower
    the rate limiter's rate.
    """

    http_status = 429
    openai_type = "insufficient_quota"
    openai_code = "insufficient_quota"


class ProtocolError(UpstreamError):
    """The upstream sent something that is not its documented wire format."""

    counts_for_breaker = True
    openai_code = "upstream_protocol_error"


class Refused(InferenceError):
    """We declined the request before calling upstream; the caller may fall back elsewhere."""

    http_status = 429
    openai_type = "rate_limit_error"


class RateLimitExceeded(Refused):
    """No rate-limit permit could be had in time. ``retry_after`` says when one may be."""

    openai_code = "rate_limit_exceeded"


class CircuitOpen(Refused):
    """The circuit for this upstream (provider, endpoint, model) is open: fail fast."""

    http_status = 503
    openai_type = "service_unavailable"
    openai_code = "circuit_open"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        opened_at: float | None = None,
        retry_at: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, retry_after=retry_after)
        self.opened_at = opened_at
        self.retry_at = retry_at


class Backpressure(Refused):
    openai_code = "backpressure"


class BudgetExceeded(Refused):
    openai_code = "budget_exceeded"


class EngineError(InferenceError):
    """A local engine's runner failed. The supervisor decides by the subclass."""

    http_status = 503
    openai_type = "server_error"


class ContextPoisoned(EngineError):
    """The runner's context (GPU context, weights) is unusable; rebuild it."""

    retryable = True
    openai_code = "context_poisoned"


class OutOfMemory(EngineError):
    retryable = True
    openai_code = "out_of_memory"


class ReplicaUnavailable(EngineError):
    """The replica could not be reached: the process or the node that ran it is gone (a
    local engine on another node of a Ray cluster). Another replica, or the fallback, may
    serve the request; nothing of it reached the client."""

    retryable = True
    openai_code = "replica_unavailable"


class Unrecoverable(EngineError):
    http_status = 500
    openai_code = "engine_unrecoverable"


class StreamInterrupted(InferenceError):
    """The upstream failed after content reached the client. Never retried: no duplicates."""

    http_status = 502
    openai_type = "upstream_error"
    openai_code = "stream_interrupted"


class RequestCancelled(InferenceError):
    """We closed it: the client went away or the request was aborted on purpose."""

    http_status = 499
    openai_type = "request_cancelled"
    openai_code = "cancelled"


class ShuttingDown(InferenceError):
    """The server stopped and its grace period ran out before this request was answered.

    We closed it, on purpose: not a failure of the upstream, and no fallback is tried.
    The client may send it again (``Retry-After``), to this server once it is back or to
    another one.
    """

    http_status = 503
    openai_type = "service_unavailable"
    openai_code = "shutting_down"


class InternalError(InferenceError):
    http_status = 500
    openai_type = "server_error"
    openai_code = "internal_error"
