"""Engine wiring: the factory for every credential kind (Vertex's OAuth2 over loopback
included), the ModelRunner surface, budget gate, throttling, deadlines, hooks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rakka_inference.actors import ActorSystem
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    Backpressure,
    BudgetExceeded,
    ConfigError,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest, SamplingParams
from rakka_inference.core.policies import (
    Budget,
    CapacityPolicy,
    CircuitBreakerConfig,
    Jitter,
    ModelPrice,
    RateLimits,
    RetryPolicy,
    Serving,
    Timeouts,
)
from rakka_inference.core.runner import SessionRebuildCause, TransportKind
from rakka_inference.core.runtimes import GeminiConfig, OpenAIConfig, RuntimeKind, VllmConfig
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import aggregate
from rakka_inference.core.usage import Usage
from rakka_inference.engine.budget import BudgetLedger
from rakka_inference.engine.report import RequestReport
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.runtime.placement import credential_key
from rakka_inference.testkit.http_script import RecordedRequest, ScriptedResponse
from rakka_inference.testkit.http_server import ScriptedHttpServer

PATH = "/v1/chat/completions"


def openai_answer(text: str = "ok") -> ScriptedResponse:
    return ScriptedResponse.json(
        {
            "choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    )


def chat(text: str = "hi", **kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=(ChatMessage.user(text),), **kw)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedHttpServer]:
    async with ScriptedHttpServer() as scripted:
        yield scripted


@pytest.fixture
async def system() -> AsyncIterator[ActorSystem]:
    actors = ActorSystem()
    yield actors
    await actors.shutdown(timeout=5)


def openai_deployment(server: ScriptedHttpServer, **kw: Any) -> Deployment:
    config = OpenAIConfig(
        endpoint=f"{server.url}/v1",
        api_key=SecretRef.inline("sk-wiring", warn=False),
        retry=RetryPolicy(initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE),
        timeouts=Timeouts(request_timeout_ms=2000),
    )
    return Deployment(
        name="wired", model="gpt-4o", runtime=RuntimeKind.OPENAI, runtime_config=config, **kw
    )


async def started(deployment: Deployment, system: ActorSystem, **kw: Any) -> RemoteEngineCore:
    engine = await build_remote_engine(deployment, RemoteServices(), **kw)
    await engine.start(system)
    return engine


# ---------------------------------------------------------------- the runner surface


async def test_runner_is_a_model_runner(server: ScriptedHttpServer, system: ActorSystem) -> None:
    server.default = openai_answer("direct")
    engine = await started(openai_deployment(server), system)
    runner = engine.runner
    assert runner.runtime_kind is RuntimeKind.OPENAI
    assert runner.transport_kind.kind is TransportKind.REMOTE_NETWORK
    assert runner.transport_kind.provider == "openai"
    assert runner.rate_limits == runner.config.rate_limits
    assert runner.estimate_cost(Usage(input_tokens=1_000_000)) == pytest.approx(2.5)
    chunks = [chunk async for chunk in runner.execute(chat())]
    assert aggregate(chunks).text == "direct"
    await runner.rebuild_session(SessionRebuildCause.OPERATOR)
    assert runner.session.generation == 2
    assert engine.capacity == 32
    assert engine.load_score == 0
    await engine.stop()


async def test_unknown_price_means_unknown_cost(
    server: ScriptedHttpServer, system: ActorSystem
) -> None:
    deployment = openai_deployment(server)

    engine = await started(replace(deployment, model="my-finetune"), system)
    assert engine.runner.estimate_cost(Usage(output_tokens=10)) is None
    await engine.stop()


# ---------------------------------------------------------------- gates and limits


def ledger(limit_usd: float) -> BudgetLedger:
    price = ModelPrice(input_per_mtok=1_000_000.0, output_per_mtok=1_000_000.0)  # $1 a token
    return BudgetLedger("d", Budget(max_spend_per_hour=limit_usd), price)


async def test_the_budget_is_reserved_at_submit_and_settled_with_the_real_cost(
    server: ScriptedHttpServer, system: ActorSystem
) -> None:
    server.default = openai_answer()
    book = ledger(30.0)
    price = ModelPrice(input_per_mtok=1_000_000.0, output_per_mtok=1_000_000.0)
    deployment = openai_deployment(server)
    engine = await started(replace(deployment, pricing=price), system, budget=book)
    stream = engine.submit(chat(sampling=SamplingParams(max_tokens=10)))
    assert book.snapshot().reserved_usd > 0  # held from submit on
    assert aggregate([c async for c in stream]).text == "ok"
    snapshot = book.snapshot()
    assert snapshot.reserved_usd == 0
    assert snapshot.settled_last_hour_usd == pytest.approx(4.0)  # 3 tokens in, 1 out
    # The next request's maximum (prompt estimate + 30 output tokens) no longer fits.
    with pytest.raises(BudgetExceeded):
        engine.submit(chat(sampling=SamplingParams(max_tokens=30)))
    assert len(server.requests) == 1
    await engine.stop()


async def test_a_request_refused_for_capacity_holds_no_budget(
    server: ScriptedHttpServer, system: ActorSystem
) -> None:
    server.default = openai_answer()
    book = ledger(1000.0)
    serving = Serving(max_concurrent=1, on_capacity_exhausted=CapacityPolicy.REJECT)
    engine = await started(openai_deployment(server, serving=serving), system, budget=book)
    first = engine.submit(chat(sampling=SamplingParams(max_tokens=5)))
    with pytest.raises(Backpressure):
        engine.submit(chat(sampling=SamplingParams(max_tokens=5)))
    assert book.snapshot().in_flight == 1
    first.close()
    await engine.stop()
    assert book.snapshot().in_flight == 0


async def test_throttle_limits_concurrency(server: ScriptedHttpServer, system: ActorSystem) -> None:
    active = 0
    peak = 0

    async def slow(recorded: RecordedRequest) -> ScriptedResponse:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return openai_answer()

    server.default = slow
    engine = await started(openai_deployment(server, serving=Serving(max_concurrent=4)), system)
    engine.set_concurrency_limit(2)  # a budget in "throttle" halves concurrency
    assert engine.capacity == 2
    streams = [engine.submit(chat(str(i))) for i in range(8)]
    for stream in streams:
        assert aggregate([c async for c in stream]).text == "ok"
    assert peak <= 2
    engine.set_concurrency_limit(100)
    assert engine.capacity == 4  # never above max_concurrent
    await engine.stop()


async def test_a_deadline_too_close_for_the_next_retry(
    server: ScriptedHttpServer, system: ActorSystem
) -> None:
    server.default = ScriptedResponse.json(
        {"error": {"message": "busy"}}, status=503, headers={"retry-after": "5"}
    )
    engine = await started(openai_deployment(server), system)
    stream = engine.submit(chat(), deadline=asyncio.get_running_loop().time() + 1.0)
    with pytest.raises(Timeout) as caught:
        aggregate([c async for c in stream])
    assert caught.value.phase is TimeoutPhase.DEADLINE
    assert len(server.requests) == 1
    await engine.stop()


async def test_the_report_travels_on_the_stream(
    server: ScriptedHttpServer, system: ActorSystem
) -> None:
    server.default = openai_answer("fine")
    engine = await started(openai_deployment(server), system)
    stream = engine.submit(chat())
    assert stream.report is None  # written when the request ends, not before
    assert aggregate([c async for c in stream]).text == "fine"
    report = stream.report
    assert isinstance(report, RequestReport)
    assert (report.outcome, report.attempts, report.error) == ("ok", 1, None)
    assert report.usage.total_tokens > 0
    await engine.stop()


async def test_a_stopped_engine_refuses(server: ScriptedHttpServer, system: ActorSystem) -> None:
    engine = await started(openai_deployment(server), system)
    await engine.stop()
    from rakka_inference.core.errors import Backpressure

    with pytest.raises(Backpressure, match="shutting down"):
        engine.submit(chat())


# ---------------------------------------------------------------- factory


async def test_factory_refuses_local_runtimes_and_missing_keys(server: ScriptedHttpServer) -> None:
    local = Deployment(name="l", model="m", runtime=RuntimeKind.VLLM, runtime_config=VllmConfig())
    with pytest.raises(ConfigError, match="not a remote runtime"):
        await build_remote_engine(local, RemoteServices())
    keyless = Deployment(
        name="k", model="gpt-4o", runtime=RuntimeKind.OPENAI, runtime_config=OpenAIConfig()
    )
    with pytest.raises(ConfigError, match="needs a credential"):
        await build_remote_engine(keyless, RemoteServices())


async def test_azure_entra_id_token(server: ScriptedHttpServer, system: ActorSystem) -> None:
    server.default = openai_answer("azure")
    config = OpenAIConfig(
        variant="azure",
        endpoint=server.url,
        resource="contoso",
        deployment="gpt4o",
        api_version="2024-10-21",
        azure_ad_token=SecretRef.inline("eyJ-entra", warn=False),
    )
    deployment = Deployment(
        name="az", model="gpt-4o", runtime=RuntimeKind.OPENAI, runtime_config=config
    )
    engine = await started(deployment, system)
    assert aggregate([c async for c in engine.submit(chat())]).text == "azure"
    [sent] = server.requests
    assert sent.path == "/openai/deployments/gpt4o/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["authorization"] == "Bearer eyJ-entra"
    await engine.stop()


async def test_vertex_service_account_flow_over_loopback(
    server: ScriptedHttpServer, system: ActorSystem, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = tmp_path / "sa.json"
    account.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "rakka@project.iam.gserviceaccount.com",
                "private_key": pem,
                "private_key_id": "kid-1",
                "token_uri": f"{server.url}/token",
            }
        )
    )

    def token(recorded: RecordedRequest) -> ScriptedResponse:
        form = dict(pair.split("=", 1) for pair in recorded.body.decode().split("&"))
        claims = jwt.decode(
            form["assertion"],
            key.public_key(),
            algorithms=["RS256"],
            audience=f"{server.url}/token",
        )
        assert claims["iss"] == "rakka@project.iam.gserviceaccount.com"
        return ScriptedResponse.json({"access_token": "ya29.vertex", "expires_in": 3600})

    server.default = token
    model_path = "/v1/projects/proj/locations/us-central1/publishers/google/models/gemini-2.5-pro"
    server.script(
        "POST",
        f"{model_path}:generateContent",
        ScriptedResponse.json(
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "vertex"}]},
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1},
            }
        ),
    )
    config = GeminiConfig(
        variant="vertex",
        endpoint=server.url,
        project="proj",
        region="us-central1",
        credentials=SecretRef.from_file(account),
    )
    deployment = Deployment(
        name="vx", model="gemini-2.5-pro", runtime=RuntimeKind.GEMINI, runtime_config=config
    )
    engine = await started(deployment, system)
    assert aggregate([c async for c in engine.submit(chat())]).text == "vertex"
    token_call, model_call = server.requests
    assert token_call.path == "/token"
    assert model_call.headers["authorization"] == "Bearer ya29.vertex"
    assert "ya29" not in model_call.path + model_call.query
    assert orjson.loads(model_call.body)["contents"][0]["parts"] == [{"text": "hi"}]
    await engine.stop()


# ---------------------------------------------------------------- shared rate limiters


def limited(
    server: ScriptedHttpServer, name: str, limits: RateLimits, key: str = "sk-x"
) -> Deployment:
    deployment = openai_deployment(server)
    config = replace(
        deployment.runtime_config,  # type: ignore[type-var]
        api_key=SecretRef.inline(key, warn=False),
        rate_limits=limits,
    )
    return replace(deployment, name=name, runtime_config=config)


async def test_a_shared_limiter_refuses_other_limits_and_keeps_its_own(
    server: ScriptedHttpServer,
) -> None:
    services = RemoteServices()
    rpm_10 = RateLimits(requests_per_minute=10)
    first = await build_remote_engine(limited(server, "a", RateLimits()), services)
    for other in (rpm_10, RateLimits(requests_per_minute=60)):
        with pytest.raises(ConfigError) as info:
            await build_remote_engine(limited(server, "b", other), services)
        (issue,) = info.value.issues
        assert issue.path == "deployment 'b'.runtime_config.rate_limits"
        assert (
            "differs from deployment 'a'.runtime_config.rate_limits, with which it shares one"
            in issue.message
        )
        assert "sk-x" not in str(info.value)
    assert first.limiter.limits == RateLimits()  # not capped by its neighbour
    same = await build_remote_engine(limited(server, "c", RateLimits()), services)
    assert same.limiter is first.limiter
    apart = await build_remote_engine(limited(server, "d", rpm_10, key="sk-y"), services)
    assert apart.limiter is not first.limiter
    for engine in (first, same, apart):
        await engine.runner.session.aclose()


async def test_two_references_to_one_key_share_and_are_checked(
    server: ScriptedHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY_ONE", "sk-same")
    monkeypatch.setenv("KEY_TWO", "sk-same")
    services = RemoteServices()
    a = limited(server, "a", RateLimits(requests_per_minute=60))
    b = limited(server, "b", RateLimits())
    a = replace(a, runtime_config=replace(a.runtime_config, api_key=SecretRef.from_env("KEY_ONE")))  # type: ignore[type-var]
    b = replace(b, runtime_config=replace(b.runtime_config, api_key=SecretRef.from_env("KEY_TWO")))  # type: ignore[type-var]
    engine = await build_remote_engine(a, services)
    with pytest.raises(
        ConfigError, match=r"'b'\.runtime_config\.rate_limits differs from deployment 'a'"
    ):
        await build_remote_engine(b, services)
    assert engine.limiter.limits == RateLimits(requests_per_minute=60)  # did not vanish
    await engine.runner.session.aclose()


async def test_vertex_deployments_share_the_limiter_of_their_service_account(
    server: ScriptedHttpServer, tmp_path: Path
) -> None:
    # The limiter is keyed by the account the config names, not by the token each session
    # gets for it (here a new one at every exchange): both deployments send that account's
    # requests, which the provider counts together.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = tmp_path / "sa.json"
    account.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "rakka@project.iam.gserviceaccount.com",
                "private_key": pem,
                "token_uri": f"{server.url}/token",
            }
        )
    )
    tokens = iter(range(1000))
    server.default = lambda recorded: ScriptedResponse.json(
        {"access_token": f"ya29.token-{next(tokens)}", "expires_in": 3600}
    )
    config = GeminiConfig(
        variant="vertex",
        endpoint=server.url,
        project="proj",
        region="us-central1",
        credentials=SecretRef.from_file(account),
        rate_limits=RateLimits(requests_per_minute=60),
    )
    services = RemoteServices()
    deployments = [
        Deployment(
            name=name, model="gemini-2.5-pro", runtime=RuntimeKind.GEMINI, runtime_config=config
        )
        for name in ("vx-a", "vx-b")
    ]
    engines = [await build_remote_engine(d, services) for d in deployments]
    assert engines[0].limiter is engines[1].limiter
    [use] = services.limiters.utilization()
    assert use.key.key_fingerprint == SecretRef.from_file(account).resolve().fingerprint()
    # Placement co-locates replicas by the same key.
    assert credential_key(deployments[0]) == (use.key.provider, use.key.key_fingerprint)
    for engine in engines:
        await engine.runner.session.aclose()


async def test_reloads_change_shared_limits_through_the_expected_config(
    server: ScriptedHttpServer,
) -> None:
    services = RemoteServices()
    rpm_10, rpm_20 = RateLimits(requests_per_minute=10), RateLimits(requests_per_minute=20)
    engines = [await build_remote_engine(limited(server, name, rpm_10), services) for name in "ab"]
    # One deployment alone on its key may change its own limits.
    solo = await build_remote_engine(limited(server, "solo", rpm_10, key="sk-solo"), services)
    again = await build_remote_engine(limited(server, "solo", rpm_20, key="sk-solo"), services)
    assert again.limiter is solo.limiter
    assert solo.limiter.limits == rpm_20
    # Both sharing deployments change together, in one staged apply: the running engines
    # keep their limits until it commits.
    wanted = [limited(server, name, rpm_20) for name in "ab"]
    services.stage(kept=("solo",))
    rebuilt = [await build_remote_engine(d, services) for d in wanted]
    assert rebuilt[0].limiter is engines[0].limiter
    assert engines[0].limiter.limits == rpm_10
    services.commit()
    assert engines[0].limiter.limits == rpm_20
    # A deployment leaving the config no longer holds the key.
    services.stage(kept=())
    newcomer = await build_remote_engine(limited(server, "c", RateLimits()), services)
    services.commit()
    assert newcomer.limiter.limits == RateLimits()
    for engine in (*engines, solo, again, *rebuilt, newcomer):
        await engine.runner.session.aclose()


async def test_a_staged_apply_holds_newcomers_to_what_kept_deployments_set(
    server: ScriptedHttpServer,
) -> None:
    services = RemoteServices()
    rpm_10 = RateLimits(requests_per_minute=10)
    kept = await build_remote_engine(limited(server, "a", rpm_10), services)
    services.stage(name for name in ("a",))  # any iterable of the kept deployments' names
    with pytest.raises(ConfigError, match=r"'b'\.runtime_config\.rate_limits differs"):
        await build_remote_engine(limited(server, "b", RateLimits()), services)
    other_breaker = replace(
        limited(server, "c", rpm_10),
        runtime_config=replace(
            limited(server, "c", rpm_10).runtime_config,  # type: ignore[type-var]
            circuit_breaker=CircuitBreakerConfig(failure_threshold=1),
        ),
    )
    with pytest.raises(ConfigError, match=r"'c'\.runtime_config\.circuit_breaker differs"):
        await build_remote_engine(other_breaker, services)
    services.abort()
    assert kept.limiter.limits == rpm_10
    await kept.runner.session.aclose()


def breaking(
    server: ScriptedHttpServer, name: str, model: str, breaker: CircuitBreakerConfig
) -> Deployment:
    deployment = openai_deployment(server)
    config = deployment.runtime_config
    assert isinstance(config, OpenAIConfig)
    config = replace(config, circuit_breaker=breaker)
    return replace(deployment, name=name, model=model, runtime_config=config)


async def test_breakers_are_keyed_by_upstream_model_with_one_config(
    server: ScriptedHttpServer,
) -> None:
    services = RemoteServices()
    three, five = CircuitBreakerConfig(failure_threshold=3), CircuitBreakerConfig()
    first = await build_remote_engine(breaking(server, "a", "gpt-4o", three), services)
    assert first.breaker.key.model == "gpt-4o"
    assert first.deployment == "a"
    same = await build_remote_engine(breaking(server, "b", "openai/gpt-4o", three), services)
    assert same.breaker is first.breaker  # the model sent upstream is the same
    other = await build_remote_engine(breaking(server, "c", "gpt-4o-mini", five), services)
    assert other.breaker is not first.breaker
    with pytest.raises(ConfigError) as info:
        await build_remote_engine(breaking(server, "d", "gpt-4o", five), services)
    (issue,) = info.value.issues
    assert issue.path == "deployment 'd'.runtime_config.circuit_breaker"
    assert "differs from deployment 'a'" in issue.message
    assert server.url not in str(info.value)
    assert first.breaker.config == three
    # A reload where they change together is staged, and commits.
    services.stage(kept=("c",))
    rebuilt = [
        await build_remote_engine(breaking(server, name, "gpt-4o", five), services) for name in "ab"
    ]
    assert first.breaker.config == three  # until the apply commits
    services.commit()
    assert first.breaker.config == five
    for engine in (first, same, other, *rebuilt):
        await engine.runner.session.aclose()
