"""The strict leases' line protocol: a lease line answered by the authority, notices
applied, replies decoded on the asker's clock, and every malformed line or reply refused."""

from __future__ import annotations

import math

import orjson
import pytest

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import DenialReason, LimiterKey
from rakka_inference.remote.strict_lease import (
    LeaseAuthority,
    LeaseGrant,
    LeaseRefusal,
    LeaseReturn,
)
from rakka_inference.remote.strict_lease_wire import (
    MAX_RETURNS,
    LeaseProtocolError,
    decode_reply,
    encode_lease,
    encode_limited,
    encode_release,
    handle_line,
)
from rakka_inference.testkit.clock import FakeClock

KEY = LimiterKey("openai", "fp0", "gpt-4o")
RPM = RateLimits(requests_per_minute=120, strict=True)


def lease_line(message_id: int = 1, **fields: object) -> bytes:
    message = orjson.loads(
        encode_lease(message_id, KEY, RPM, want=(2, 10), need=5, returns=[LeaseReturn(1, 0, 0, 0)])
    )
    message.update(fields)
    return orjson.dumps(message)


def test_a_lease_line_is_answered_and_notices_are_applied() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=1.0)
    reply = handle_line(authority, lease_line(7))
    assert reply is not None
    assert reply.endswith(b"\n")
    assert orjson.loads(reply) == {"id": 7, "grant": [1, 2, 10, 1.0]}
    assert decode_reply(reply, 50.0) == (7, LeaseGrant(1, 2, 10, 1.0))
    assert handle_line(authority, encode_release([LeaseReturn(1, 2, 10, 0)])) is None
    assert authority.utilization()[0].requests_in_window == 0
    assert handle_line(authority, encode_limited(KEY, 3.0)) is None
    refusal = handle_line(authority, lease_line(8))
    assert refusal is not None
    assert orjson.loads(refusal) == {"id": 8, "refuse": [3.0, "retry_after"]}
    assert decode_reply(refusal, 50.0) == (8, LeaseRefusal(53.0, 3.0, DenialReason.RETRY_AFTER))
    assert handle_line(authority, encode_limited(KEY, None)) is None
    never = orjson.dumps({"id": 9, "refuse": [None, "too_large"]})
    assert decode_reply(never, 0.0) == (9, LeaseRefusal(math.inf, None, DenialReason.TOO_LARGE))


@pytest.mark.parametrize(
    ("line", "message_id"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"op": "steal"}', None),
        (b'{"op": "limited", "key": ["a", "b"], "retry_after": 1}', None),
        (b'{"op": "limited", "key": ["a", "b", "c"], "retry_after": "soon"}', None),
        (b'{"op": "release", "returns": [[1, 2, 3]]}', None),
        (b'{"op": "release", "returns": 5}', None),
        (lease_line(id=-1), None),
        (lease_line(id=True), None),
        (lease_line(3, key=["a", "b", 7]), 3),
        (lease_line(3, key=["a", "b", "x" * 600]), 3),
        (lease_line(3, limits=[10]), 3),
        (lease_line(3, limits=[-1, None]), 3),
        (lease_line(3, want=[1, 2.5]), 3),
        (lease_line(3, want=None), 3),
        (lease_line(3, need=2**60), 3),
        (lease_line(3, returns=[[1, 0, 0, 0]] * (MAX_RETURNS + 1)), 3),
        (lease_line(3, returns=[None]), 3),
    ],
)
def test_a_malformed_line_gets_an_error_reply(line: bytes, message_id: int | None) -> None:
    authority = LeaseAuthority(FakeClock(), lease_ttl=1.0)
    reply = handle_line(authority, line)
    assert reply is not None
    message = orjson.loads(reply)
    assert message["id"] == message_id
    assert message["error"]
    assert handle_line(authority, lease_line(4)) is not None  # still serving


@pytest.mark.parametrize(
    "line",
    [
        b"{",
        b"[]",
        b'{"id": 1}',
        b'{"id": 1, "error": "bad"}',
        b'{"id": 1, "grant": [1, 2, 3, "ttl"]}',
        b'{"id": 1, "refuse": [1.0, "nope"]}',
        b'{"id": 1, "refuse": [NaN, "requests_per_minute"]}',
    ],
)
def test_a_malformed_reply_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(LeaseProtocolError):
        decode_reply(line, 0.0)
