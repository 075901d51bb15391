"""The line protocol of strict leases: the holders' requests, the authority's replies.

Pure and sans-I/O: the ``encode_*`` functions and :func:`decode_reply` are the holder's
side, :func:`handle_line` serves one line to a
:class:`~rakka_inference.remote.strict_lease.LeaseAuthority` and returns its reply.
:mod:`rakka_inference.remote.strict_lease_unix` carries the lines over a Unix socket.

Format
------
Newline-delimited compact JSON (orjson, never pickle), at most :data:`MAX_LINE` bytes a
line, over one connection per holder::

    -> {"op": "lease", "id": 7, "key": [provider, fingerprint, model], "limits": [rpm, tpm],
        "want": [requests, tokens], "need": tokens, "returns": [[lease, req, tok, over], ..]}
    <- {"id": 7, "grant": [lease, requests, tokens, ttl]}
    <- {"id": 7, "refuse": [retry_after | null, reason]}
    -> {"op": "release", "returns": [...]}                   (at close; no reply)
    -> {"op": "limited", "key": [...], "retry_after": s | null}   (a provider 429; no reply)
    <- {"id": 7 | null, "error": text}                        (a malformed line)

A refusal's ``retry_after`` is relative (``null``: never), so the two sides' clocks need
not agree; :func:`decode_reply` turns it into a time on the asker's clock.

Guarantees
----------
Every line is validated before anything is applied: a JSON object of a known ``op``,
integers non-negative and below 2**53, names at most 512 characters, at most
:data:`MAX_RETURNS` returns a message. :func:`handle_line` answers a malformed line with an
``error`` reply (its ``id`` when it could be read) and never raises; :func:`decode_reply`
raises only :class:`LeaseProtocolError`.
"""

from __future__ import annotations

import math

import orjson

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import DenialReason, LimiterKey
from rakka_inference.remote.strict_lease import (
    LeaseAuthority,
    LeaseGrant,
    LeaseRefusal,
    LeaseReturn,
)

__all__ = [
    "MAX_LINE",
    "MAX_RETURNS",
    "LeaseProtocolError",
    "decode_reply",
    "encode_error",
    "encode_lease",
    "encode_limited",
    "encode_release",
    "handle_line",
]

MAX_LINE = 64 * 1024
"""The longest line either side accepts, newline included."""
MAX_RETURNS = 1024
"""The most lease returns one message may carry."""
_MAX_NAME = 512
_MAX_INT = 2**53
_REASONS = frozenset(reason.value for reason in DenialReason)


class LeaseProtocolError(ValueError):
    """A line that is not a valid message of the lease protocol."""


def _line(message: dict[str, object]) -> bytes:
    return orjson.dumps(message) + b"\n"


def encode_error(message_id: int | None, text: str) -> bytes:
    """The reply to a malformed line (``message_id`` when it could be read)."""
    return _line({"id": message_id, "error": text[:200]})


def _int(value: object) -> int:
    if type(value) is not int or not 0 <= value < _MAX_INT:
        raise LeaseProtocolError("expected a non-negative integer")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < _MAX_INT:
        raise LeaseProtocolError("expected a non-negative number")
    return float(value)


def _key(value: object) -> LimiterKey:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(part, str) and len(part) <= _MAX_NAME for part in value)
    ):
        raise LeaseProtocolError("a key is [provider, fingerprint, model]")
    return LimiterKey(*value)


def _pair(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise LeaseProtocolError("expected a pair of integers")
    return _int(value[0]), _int(value[1])


def _limits(value: object) -> RateLimits:
    if not isinstance(value, list) or len(value) != 2:
        raise LeaseProtocolError("limits is [rpm, tpm]")
    rpm, tpm = (None if limit is None else _int(limit) for limit in value)
    return RateLimits(requests_per_minute=rpm, tokens_per_minute=tpm, strict=True)


def _returns(value: object) -> list[LeaseReturn]:
    if not isinstance(value, list) or len(value) > MAX_RETURNS:
        raise LeaseProtocolError("returns is a list of [lease, requests, tokens, overrun]")
    items = []
    for item in value:
        if not isinstance(item, list) or len(item) != 4:
            raise LeaseProtocolError("a return is [lease, requests, tokens, overrun]")
        items.append(LeaseReturn(*(_int(part) for part in item)))
    return items


def encode_lease(
    message_id: int,
    key: LimiterKey,
    limits: RateLimits,
    *,
    want: tuple[int, int],
    need: int,
    returns: list[LeaseReturn],
) -> bytes:
    """A lease request line (``returns`` ride along: no extra round trip)."""
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    return _line(
        {
            "op": "lease",
            "id": message_id,
            "key": list(key),
            "limits": [rpm, tpm],
            "want": list(want),
            "need": need,
            "returns": [list(item) for item in returns],
        }
    )


def encode_release(returns: list[LeaseReturn]) -> bytes:
    return _line({"op": "release", "returns": [list(item) for item in returns]})


def encode_limited(key: LimiterKey, retry_after: float | None) -> bytes:
    return _line({"op": "limited", "key": list(key), "retry_after": retry_after})


def decode_reply(line: bytes, now: float) -> tuple[int, LeaseGrant | LeaseRefusal]:
    """A reply line as ``(id, grant or refusal)``; a refusal's ``retry_at`` is ``now +
    retry_after`` on the asker's clock. Raises :class:`LeaseProtocolError`."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LeaseProtocolError("a reply is one JSON object") from exc
    if not isinstance(message, dict):
        raise LeaseProtocolError("a reply is a JSON object")
    message_id = _int(message.get("id"))
    grant, refuse = message.get("grant"), message.get("refuse")
    if isinstance(grant, list) and len(grant) == 4:
        lease_id, requests, tokens = (_int(part) for part in grant[:3])
        return message_id, LeaseGrant(lease_id, requests, tokens, _number(grant[3]))
    if isinstance(refuse, list) and len(refuse) == 2 and refuse[1] in _REASONS:
        reason = DenialReason(refuse[1])
        if refuse[0] is None:
            return message_id, LeaseRefusal(math.inf, None, reason)
        retry_after = _number(refuse[0])
        return message_id, LeaseRefusal(now + retry_after, retry_after, reason)
    raise LeaseProtocolError(f"unexpected reply: {str(message.get('error'))[:200]}")


# --------------------------------------------------------------------------- serving


def handle_line(authority: LeaseAuthority, line: bytes) -> bytes | None:
    """Serve one line to ``authority``: the reply line, or None for a notice.

    A malformed line gets an ``error`` reply; it never raises.
    """
    message_id: int | None = None
    try:
        message = orjson.loads(line)
        if not isinstance(message, dict):
            raise LeaseProtocolError("a message is a JSON object")
        op = message.get("op")
        if op == "release":
            for item in _returns(message.get("returns")):
                authority.release(*item)
            return None
        if op == "limited":
            retry_after = message.get("retry_after")
            if retry_after is not None:
                retry_after = _number(retry_after)
            authority.on_rate_limited(_key(message.get("key")), retry_after)
            return None
        if op != "lease":
            raise LeaseProtocolError("unknown op")
        message_id = _int(message.get("id"))
        key = _key(message.get("key"))
        limits = _limits(message.get("limits"))
        want_requests, want_tokens = _pair(message.get("want"))
        need = _int(message.get("need"))
        returns = _returns(message.get("returns"))
    except ValueError as exc:  # orjson.JSONDecodeError is one
        return encode_error(message_id, str(exc))
    for item in returns:
        authority.release(*item)
    result = authority.request(key, limits, want_requests, want_tokens, need_tokens=need)
    if isinstance(result, LeaseGrant):
        grant = [result.lease_id, result.requests, result.tokens, result.ttl]
        return _line({"id": message_id, "grant": grant})
    return _line({"id": message_id, "refuse": [result.retry_after, result.reason.value]})
