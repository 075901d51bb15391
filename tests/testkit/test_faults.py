"""The mocks' shared fault plan and reply script."""

from __future__ import annotations

import pytest

from rakka_inference.testkit.faults import (
    Fault,
    FaultKind,
    FaultPlan,
    ReplyScript,
    count_tokens,
    parse_fault_header,
)


def test_fault_header_forms() -> None:
    assert parse_fault_header("rate_limit") == Fault.rate_limit(1.0)
    assert parse_fault_header("rate_limit;retry_after=0.25") == Fault.rate_limit(0.25)
    assert parse_fault_header("server_error;status=502") == Fault.server_error(502)
    assert parse_fault_header("stall; after_chunks=2") == Fault.stall(2)
    assert parse_fault_header("slow_first_byte;delay=0.1") == Fault.slow_first_byte(0.1)
    with pytest.raises(ValueError):
        parse_fault_header("meteor_strike")
    with pytest.raises(ValueError, match="unknown fault parameter"):
        parse_fault_header("stall;colour=red")


def test_plan_order_header_then_queue_then_key() -> None:
    plan = FaultPlan()
    plan.next(Fault.overloaded(), Fault.content_filter())
    plan.for_key("k1", Fault.reset(3), times=2)
    assert plan.take("k1", "context_length") == Fault.context_length()
    assert plan.take("k1") == Fault.overloaded()
    assert plan.take("k1") == Fault.content_filter()
    assert plan.take("k1") == Fault.reset(3)
    assert plan.take("k1") == Fault.reset(3)
    assert plan.take("k1") is None
    plan.for_key("k2", Fault.malformed_chunk())
    assert plan.take("k2") == plan.take("k2") == Fault.malformed_chunk()
    plan.next(Fault.unauthorized())
    plan.clear()
    assert plan.take("k2") is None


def test_key_rotation() -> None:
    plan = FaultPlan()
    assert plan.accepts("anything")
    assert not plan.accepts("")
    assert not plan.accepts(None)
    plan.valid_keys = {"old"}
    plan.rotate_key("old", "new")
    assert plan.accepts("new")
    assert not plan.accepts("old")


def test_reply_pieces_and_tokens() -> None:
    script = ReplyScript(chunks=3)
    assert script.answer_text("hi") == "You said: hi"
    assert script.pieces("abcdefgh") == ["abc", "def", "gh"]
    assert "".join(ReplyScript(chunks=20).pieces("abcdefgh")) == "abcdefgh"
    assert len(ReplyScript(chunks=20).pieces("abcdefgh")) == 8
    assert ReplyScript(text="fixed").answer_text("ignored") == "fixed"
    assert ReplyScript().pieces("") == [""]
    assert count_tokens(["two words", "three more words"]) == 5
    assert count_tokens([]) == 1
    assert FaultKind("stall") is FaultKind.STALL
