"""RequestActor: fallbacks before the first byte only, cancellation, the log line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import pytest

from rakka_inference.core.errors import (
    Backpressure,
    BadRequest,
    CircuitOpen,
    ContextPoisoned,
    InferenceError,
    ModelNotFound,
    OutOfMemory,
    RateLimitExceeded,
    ServerError,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.policies import CapacityPolicy
from rakka_inference.core.stream import FinishReason, TokenChunk
from rakka_inference.core.usage import Usage
from rakka_inference.engine.report import RequestRecord, RequestReport
from rakka_inference.engine.stream import RequestStream
from rakka_inference.runtime.request import (
    MAX_WAIT_HEADER,
    FallbackPolicy,
    RequestActor,
    client_max_wait_s,
)

Script = Callable[[RequestStream[TokenChunk]], "asyncio.Future[None] | None"]


@dataclass
class ScriptedReplica:
    """A replica whose answer is a list of chunks, then an optional failure."""

    name: str
    chunks: list[TokenChunk] = field(default_factory=list)
    fail_with: InferenceError | None = None
    refuse_with: InferenceError | None = None
    submitted: int = 0
    streams: list[RequestStream[TokenChunk]] = field(default_factory=list)
    hold: asyncio.Event | None = None
    max_wait_s: float | None = None

    def submit(
        self,
        request: ChatRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[TokenChunk]:
        self.max_wait_s = max_wait_s
        if self.refuse_with is not None:
            raise self.refuse_with
        self.submitted += 1
        stream: RequestStream[TokenChunk] = RequestStream()
        self.streams.append(stream)
        asyncio.get_running_loop().create_task(self._produce(stream))
        return stream

    async def _produce(self, stream: RequestStream[TokenChunk]) -> None:
        try:
            for chunk in self.chunks:
                await stream.put(chunk, commit=bool(chunk.text or chunk.finish_reason))
                if self.hold is not None:
                    await self.hold.wait()
        except InferenceError:
            return  # the consumer closed the stream
        stream.report = RequestReport(
            request_id="r",
            outcome="ok",
            error=None,
            attempts=2,
            usage=Usage(),
            cost_usd=0.001,
            queued_s=0,
            latency_s=0,
            ttft_s=None,
        )
        if self.fail_with is not None:
            stream.fail(self.fail_with)
        else:
            stream.finish()


@dataclass
class FakeRouter:
    replicas: dict[str, ScriptedReplica | InferenceError]
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, model: str) -> str:
        if model in self.replicas:
            return model
        if model in self.aliases:
            return self.aliases[model]
        raise ModelNotFound(f"no {model}", param="model")

    def route_deployment(self, deployment: str, exclude: Collection[str] = ()) -> ScriptedReplica:
        target = self.replicas[deployment]
        if isinstance(target, InferenceError):
            raise target
        return target


@dataclass
class TwoReplicas:
    """Routes to the first replica not excluded, like the coordinator does."""

    replicas: list[ScriptedReplica]

    def resolve(self, model: str) -> str:
        return model

    def route_deployment(self, deployment: str, exclude: Collection[str] = ()) -> ScriptedReplica:
        for replica in self.replicas:
            if replica.name not in exclude:
                return replica
        raise CircuitOpen("no replica left")


ANSWER = [
    TokenChunk(usage=Usage(input_tokens=5)),
    TokenChunk(text="Hel"),
    TokenChunk(text="lo", finish_reason=FinishReason.STOP, usage=Usage(output_tokens=2)),
]


def request(model: str = "primary") -> ChatRequest:
    return ChatRequest(model=model, messages=(ChatMessage.user("hi"),), request_id="req_test")


def actor(
    router: FakeRouter, **policies: FallbackPolicy
) -> tuple[RequestActor, list[RequestRecord]]:
    records: list[RequestRecord] = []
    return RequestActor(request(), router, policies, on_done=records.append), records


WITH_BACKUP = FallbackPolicy(fallbacks=("backup",))


async def test_the_happy_path_and_its_record() -> None:
    router = FakeRouter({"primary": ScriptedReplica("p0", ANSWER)})
    subject, records = actor(router)
    completion = await subject.completion()
    assert completion.text == "Hello"
    [record] = records
    assert (record.deployment, record.replica, record.outcome) == ("primary", "p0", "ok")
    assert record.usage == Usage(input_tokens=5, output_tokens=2)
    assert record.attempts == 2
    assert record.cost_usd == pytest.approx(0.001)
    assert record.ttft_s is not None


@pytest.mark.parametrize(
    "failure",
    [
        CircuitOpen("open"),
        ServerError("503 after retries"),
    ],
)
async def test_falls_back_before_the_first_byte(failure: InferenceError) -> None:
    primary: ScriptedReplica | InferenceError = failure
    if isinstance(failure, ServerError):
        primary = ScriptedReplica(
            "p0", [TokenChunk(usage=Usage(input_tokens=5))], fail_with=failure
        )
    router = FakeRouter({"primary": primary, "backup": ScriptedReplica("b0", ANSWER)})
    subject, records = actor(router, primary=WITH_BACKUP)
    assert (await subject.completion()).text == "Hello"
    assert records[0].tried == ["primary", "backup"]
    assert records[0].deployment == "backup"


async def test_a_spent_wait_budget_falls_back_before_the_first_byte() -> None:
    # A 429 whose Retry-After is past the wait budget ends as RateLimitExceeded at once:
    # another deployment may serve the request.
    spent = RateLimitExceeded("429 (wait budget spent)", retry_after=30.0)
    primary = ScriptedReplica("p0", [], fail_with=spent)
    router = FakeRouter({"primary": primary, "backup": ScriptedReplica("b0", ANSWER)})
    subject, records = actor(router, primary=WITH_BACKUP)
    assert (await subject.completion()).text == "Hello"
    assert records[0].tried == ["primary", "backup"]
    # With no fallback left, the client gets it as it is (429 with its Retry-After).
    subject, records = actor(FakeRouter({"primary": primary}))
    with pytest.raises(RateLimitExceeded) as caught:
        await subject.completion()
    assert caught.value.retry_after == 30.0


async def test_the_client_s_wait_budget_reaches_every_replica_tried() -> None:
    primary = ScriptedReplica("p0", [], fail_with=ServerError("503 after retries"))
    backup = ScriptedReplica("b0", ANSWER)
    router = FakeRouter({"primary": primary, "backup": backup})
    subject = RequestActor(request(), router, {"primary": WITH_BACKUP}, max_wait_s=0.25)
    assert (await subject.completion()).text == "Hello"
    assert (primary.max_wait_s, backup.max_wait_s) == (0.25, 0.25)
    plain = RequestActor(request("backup"), router, {})
    assert (await plain.completion()).text == "Hello"
    assert backup.max_wait_s is None  # none asked for: the deployment's budget


def test_the_wait_budget_header() -> None:
    assert MAX_WAIT_HEADER == b"x-rakka-max-wait-ms"
    assert client_max_wait_s(None) is None
    assert client_max_wait_s("2500") == 2.5
    assert client_max_wait_s(" 0 ") == 0.0
    for bad in ("", "-1", "1.5", "1e3", "soon", "\u0661"):
        with pytest.raises(BadRequest) as refused:
            client_max_wait_s(bad)
        assert refused.value.param == "x-rakka-max-wait-ms"
        assert refused.value.http_status == 400


async def test_backpressure_falls_back_unless_the_policy_is_reject() -> None:
    full = ScriptedReplica("p0", refuse_with=Backpressure("queue full"))
    router = FakeRouter({"primary": full, "backup": ScriptedReplica("b0", ANSWER)})
    subject, _ = actor(router, primary=WITH_BACKUP)
    assert (await subject.completion()).text == "Hello"
    rejecting = FallbackPolicy(fallbacks=("backup",), capacity_policy=CapacityPolicy.REJECT)
    subject, records = actor(router, primary=rejecting)
    with pytest.raises(Backpressure):
        await subject.completion()
    assert records[0].outcome == "backpressure"


async def test_a_bad_request_is_the_answer_not_a_fallback() -> None:
    router = FakeRouter(
        {
            "primary": ScriptedReplica("p0", [], fail_with=BadRequest("no")),
            "backup": ScriptedReplica("b0", ANSWER),
        }
    )
    subject, records = actor(router, primary=WITH_BACKUP)
    with pytest.raises(BadRequest):
        await subject.completion()
    assert records[0].tried == ["primary"]


async def test_no_fallback_after_the_first_visible_chunk() -> None:
    router = FakeRouter(
        {
            "primary": ScriptedReplica("p0", ANSWER[:2], fail_with=ServerError("mid-stream")),
            "backup": ScriptedReplica("b0", ANSWER),
        }
    )
    subject, _ = actor(router, primary=WITH_BACKUP)
    chunks = subject.chunks()
    assert (await anext(chunks)).usage is not None
    assert (await anext(chunks)).text == "Hel"  # once; the backup is never asked
    with pytest.raises(ServerError):
        await anext(chunks)
    assert router.replicas["backup"].submitted == 0  # type: ignore[union-attr]


async def test_every_deployment_failing_raises_the_last_error() -> None:
    router = FakeRouter({"primary": CircuitOpen("a"), "backup": CircuitOpen("b")})
    subject, records = actor(router, primary=WITH_BACKUP)
    with pytest.raises(CircuitOpen, match="b"):
        await subject.completion()
    assert records[0].outcome == "circuit_open"


async def test_unknown_model_and_aliases() -> None:
    router = FakeRouter({"primary": ScriptedReplica("p0", ANSWER)}, aliases={"alias": "primary"})
    records: list[RequestRecord] = []
    aliased = RequestActor(request("alias"), router, {}, on_done=records.append)
    assert (await aliased.completion()).text == "Hello"
    missing = RequestActor(request("nope"), router, {}, on_done=records.append)
    with pytest.raises(ModelNotFound):
        await missing.completion()
    assert records[-1].outcome == "model_not_found"


async def test_the_client_going_away_closes_the_engine_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    replica = ScriptedReplica("p0", ANSWER, hold=asyncio.Event())
    router = FakeRouter({"primary": replica})
    subject, records = actor(router)
    chunks = subject.chunks()
    with caplog.at_level(logging.INFO, logger="rakka_inference.requests"):
        await anext(chunks)  # the usage chunk
        await chunks.aclose()  # the client disconnected
    assert replica.streams[0].closed
    assert records[0].outcome == "cancelled"
    [line] = [r for r in caplog.records if r.getMessage() == "request"]
    fields = line.__dict__["request"]
    assert fields["request_id"] == "req_test"
    assert "hi" not in str(fields)  # never the prompt
    replica.hold.set()  # type: ignore[union-attr]
    await asyncio.sleep(0)


async def test_a_poisoned_context_is_retried_on_another_replica() -> None:
    poisoned = ScriptedReplica("a", fail_with=ContextPoisoned("context lost"))
    healthy = ScriptedReplica("b", chunks=list(ANSWER))
    actor = RequestActor(request(), TwoReplicas([poisoned, healthy]), {})
    chunks = [chunk async for chunk in actor.chunks()]
    assert "".join(c.text for c in chunks) == "Hello"
    assert (poisoned.submitted, healthy.submitted, actor.record.replica) == (1, 1, "b")


async def test_when_every_replica_is_poisoned_the_client_hears_why() -> None:
    replicas = [ScriptedReplica(n, fail_with=OutOfMemory("oom")) for n in ("a", "b")]
    actor = RequestActor(request(), TwoReplicas(replicas), {})
    with pytest.raises(OutOfMemory):
        [chunk async for chunk in actor.chunks()]
    assert [r.submitted for r in replicas] == [1, 1]
