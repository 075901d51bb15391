"""TransformersRunner on a tiny random Llama with a real tokenizer, loaded through the
runner's own offline path: streaming through the engine and the gateway, continuous
batching, the finish reasons, sampling, cancellation, typed errors and a poisoned context
rebuilt by its supervisor.

On the device ``$RAKKA_TEST_DEVICE`` names (``cpu`` when unset; see conftest.py): ``cuda``
runs them on a GPU.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import (
    BadRequest,
    ConfigError,
    ContextLengthExceeded,
    ContextPoisoned,
    OutOfMemory,
    StreamInterrupted,
    Unrecoverable,
)
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    ImagePart,
    ResponseFormat,
    SamplingParams,
    TextPart,
    ToolDefinition,
)
from rakka_inference.core.policies import ModelPrice, RateLimits, Serving
from rakka_inference.core.runner import ModelRunner, SessionRebuildCause, TransportKind
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind, TransformersConfig
from rakka_inference.core.stream import FinishReason, TokenChunk, collect
from rakka_inference.core.tools import ToolCall
from rakka_inference.core.usage import Usage
from rakka_inference.local import transformers_runner
from rakka_inference.local.engine import LocalEngineCore
from rakka_inference.local.transformers_runner import (
    EXTRA_INSTALL_HINT,
    TransformersRunner,
    model_source_problem,
)
from rakka_inference.runtime.replicas import EngineBuilder
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.serving import serving

DEVICE = os.environ.get("RAKKA_TEST_DEVICE", "cpu")
"""The device the tiny model runs on, unless a test names another."""


def deployment(model: str, *, pricing: ModelPrice | None = None, **config: Any) -> Deployment:
    return Deployment(
        name="tiny",
        model=model,
        runtime=RuntimeKind.TRANSFORMERS,
        runtime_config=TransformersConfig(**{"device": DEVICE, **config}),
        serving=Serving(max_concurrent=16),
        pricing=pricing,
    )


def chat(text: str = "Hello there", **sampling: Any) -> ChatRequest:
    return ChatRequest(
        model="tiny",
        messages=(ChatMessage.user(text),),
        sampling=SamplingParams(**{"temperature": 0.0, **sampling}),
        stream=True,
    )


async def loaded(model_dir: Path, **options: Any) -> TransformersRunner:
    max_batch_size = options.pop("max_batch_size", None)
    runner = TransformersRunner(
        deployment(str(model_dir), **options), max_batch_size=max_batch_size
    )
    await runner.load_weights()
    return runner


async def answer(runner: TransformersRunner, request: ChatRequest) -> list[TokenChunk]:
    return [chunk async for chunk in runner.execute(request)]


def text_of(chunks: list[TokenChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def prompt_tokens(model_dir: Path, text: str) -> int:
    transformers = importlib.import_module("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- serving


async def test_streams_through_the_local_engine_with_exact_usage(tiny_model_dir: Path) -> None:
    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
    tiny = deployment(str(tiny_model_dir), pricing=price)
    system = ActorSystem("test")
    engine = LocalEngineCore("tiny-0", lambda: TransformersRunner(tiny), serving=tiny.serving)
    await engine.start(system)
    try:
        stream = engine.submit(chat("Hello there", max_tokens=8))
        chunks = [chunk async for chunk in stream]
        assert len(chunks) > 1  # streamed as it decoded
        assert chunks[-1].finish_reason is FinishReason.LENGTH
        assert [chunk.finish_reason for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
        expected = Usage(input_tokens=prompt_tokens(tiny_model_dir, "Hello there"), output_tokens=8)
        assert chunks[-1].usage == expected
        report = stream.report
        assert report is not None
        assert (report.outcome, report.usage) == ("ok", expected)
        assert report.cost_usd == pytest.approx((expected.input_tokens + 2 * 8) / 1e6)
    finally:
        await engine.stop(timeout=1)
        await system.shutdown(timeout=1)


async def test_the_openai_sdk_streams_through_the_gateway(tiny_model_dir: Path) -> None:
    topology = Topology(
        Config(cluster=ClusterConfig(), deployments=(deployment(str(tiny_model_dir)),))
    )
    async with serving(topology.gateway) as base:
        sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        try:
            stream = await sdk.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "Hello there"}],
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces, finish, usage = [], None, None
            async for event in stream:
                for choice in event.choices:
                    pieces.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
                usage = event.usage or usage
            whole = await sdk.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "Hello there"}],
                max_tokens=6,
                temperature=0,
            )
        finally:
            await sdk.close()
    assert finish == "length"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        prompt_tokens(tiny_model_dir, "Hello there"),
        6,
    )
    assert whole.choices[0].message.content == "".join(pieces)


async def test_choices_and_logprobs_are_400s_naming_them_through_the_gateway(
    tiny_model_dir: Path,
) -> None:
    topology = Topology(
        Config(cluster=ClusterConfig(), deployments=(deployment(str(tiny_model_dir)),))
    )
    asks: list[tuple[dict[str, Any], str]] = [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 3}, "top_logprobs"),
    ]
    async with serving(topology.gateway) as base:
        sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        try:
            for options, param in asks:
                for stream in (False, True):
                    with pytest.raises(openai.BadRequestError) as refused:
                        await sdk.chat.completions.create(
                            model="tiny",
                            messages=[{"role": "user", "content": "Hello there"}],
                            max_tokens=2,
                            stream=stream,
                            **options,
                        )
                    body = refused.value.body
                    assert isinstance(body, dict)
                    assert body["param"] == param
                    assert body["message"].startswith("the transformers runtime")
        finally:
            await sdk.close()


async def test_eight_concurrent_requests_decode_in_one_batch(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir)
    requests = [chat(f"request number {i} " * (i + 1), max_tokens=12) for i in range(8)]
    answers = await asyncio.gather(*(answer(runner, request) for request in requests))
    stats = runner.stats
    assert stats.max_batch_size == 8
    assert stats.prefills == 8
    assert stats.steps < 8 * 11  # one at a time would take 8 x 11 steps
    assert all(chunks[-1].finish_reason is FinishReason.LENGTH for chunks in answers)
    assert all(chunks[-1].usage.output_tokens == 12 for chunks in answers)  # type: ignore[union-attr]
    # Batching changes nothing in a greedy answer: the same request alone says the same.
    alone = await answer(runner, requests[5])
    assert text_of(alone) == text_of(answers[5])


async def test_one_at_a_time_mode_never_batches(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir, max_batch_size=1)
    await asyncio.gather(*(answer(runner, chat(max_tokens=3)) for _ in range(3)))
    assert runner.stats.max_batch_size == 1
    assert runner.batcher is not None
    assert runner.batcher.max_batch_size == 1


async def test_the_configured_default_caps_a_request_without_max_tokens(
    tiny_model_dir: Path,
) -> None:
    runner = await loaded(tiny_model_dir, max_new_tokens_default=5)
    chunks = await answer(runner, chat())
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens == 5


async def test_the_cap_never_runs_past_the_models_context(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir)
    long = "word " * 30
    used = prompt_tokens(tiny_model_dir, long)
    chunks = await answer(runner, chat(long, max_tokens=10_000))
    assert chunks[-1].usage == Usage(input_tokens=used, output_tokens=256 - used)


async def test_a_stop_sequence_ends_the_answer_before_it(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir)
    free = text_of(await answer(runner, chat(max_tokens=24)))
    clean = [i for i in range(4, len(free) - 2) if "\ufffd" not in free[i : i + 2]]
    at = clean[0]
    stop = free[at : at + 2]
    cut = free.index(stop)
    chunks = await answer(runner, chat(max_tokens=24, stop=(stop, "never-seen")))
    assert text_of(chunks) == free[:cut]
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens < 24


async def test_a_seed_repeats_a_sampled_answer(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir)

    async def sampled(seed: int | None, top_p: float = 1.0) -> str:
        request = chat(max_tokens=16, temperature=1.0, top_p=top_p, seed=seed)
        return text_of(await answer(runner, request))

    first = await sampled(7)
    assert await sampled(7) == first
    assert await sampled(8) != first
    nucleus = await sampled(7, top_p=0.5)
    assert await sampled(7, top_p=0.5) == nucleus
    assert await sampled(None)  # an unseeded request draws from a fresh generator


async def test_a_closed_request_frees_its_slot_at_the_next_step(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir)
    batcher = runner.batcher
    assert batcher is not None
    stream = runner.execute(chat(max_tokens=200))
    first = await anext(stream)
    assert first.finish_reason is None
    assert batcher.active == 1
    await stream.aclose()
    await until(lambda: batcher.active == 0 and not batcher.running)
    assert runner.stats.tokens < 200  # the work stopped, it did not run to the cap
    chunks = await answer(runner, chat(max_tokens=3))
    assert chunks[-1].finish_reason is FinishReason.LENGTH


async def test_a_cancelled_task_aborts_its_request(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir)
    batcher = runner.batcher
    assert batcher is not None
    task = asyncio.ensure_future(collect(runner.execute(chat(max_tokens=200))))
    await until(lambda: runner.stats.tokens > 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: batcher.active == 0 and not batcher.running)
    assert runner.stats.tokens < 200


# --------------------------------------------------------------------------- failures


async def test_a_poisoned_context_is_rebuilt_by_its_supervisor(tiny_model_dir: Path) -> None:
    tiny = deployment(str(tiny_model_dir))
    system = ActorSystem("test")
    engine = LocalEngineCore("tiny-0", lambda: TransformersRunner(tiny), serving=tiny.serving)
    await engine.start(system)
    try:
        first = engine.runner
        assert isinstance(first, TransformersRunner)
        stream = engine.submit(chat(max_tokens=200))
        chunks = aiter(stream)
        await anext(chunks)
        first.inject_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
        # After the first visible chunk, the engine reports the poisoning as an interruption.
        with pytest.raises(StreamInterrupted, match="illegal memory access"):
            async for _ in chunks:
                pass
        await until(lambda: engine.generation == 2)
        assert engine.runner is not first
        # The old context refuses new work at once; the new one serves.
        with pytest.raises(ContextPoisoned, match="being rebuilt"):
            await answer(first, chat(max_tokens=2))
        after = [chunk async for chunk in engine.submit(chat(max_tokens=3))]
        assert after[-1].finish_reason is FinishReason.LENGTH
    finally:
        await engine.stop(timeout=1)
        await system.shutdown(timeout=1)


async def test_out_of_memory_fails_the_step_and_keeps_the_context(tiny_model_dir: Path) -> None:
    torch = importlib.import_module("torch")
    runner = await loaded(tiny_model_dir)
    stream = runner.execute(chat(max_tokens=200))
    await anext(stream)
    runner.inject_fault(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    with pytest.raises(OutOfMemory, match="Tried to allocate"):
        async for _ in stream:
            pass
    chunks = await answer(runner, chat(max_tokens=3))  # the same context serves on
    assert chunks[-1].finish_reason is FinishReason.LENGTH


async def test_a_prompt_longer_than_the_context_is_refused(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir)
    with pytest.raises(ContextLengthExceeded, match="context holds 256") as refused:
        await answer(runner, chat("word " * 300))
    assert refused.value.param == "messages"


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (chat(n=2), "n"),
        (chat(logprobs=True), "logprobs"),
        (chat(logprobs=True, top_logprobs=2), "top_logprobs"),
        (chat(presence_penalty=0.5), "presence_penalty"),
        (
            ChatRequest(
                model="tiny",
                messages=(ChatMessage.user("hi"),),
                tools=(ToolDefinition(name="f", parameters={"type": "object"}),),
            ),
            "tools",
        ),
        (
            ChatRequest(
                model="tiny",
                messages=(ChatMessage.user("hi"),),
                response_format=ResponseFormat(type="json_object"),
            ),
            "response_format",
        ),
        (
            ChatRequest(
                model="tiny",
                messages=(
                    ChatMessage.user(
                        (TextPart(text="look"), ImagePart.from_base64("image/png", "aGk="))
                    ),
                ),
            ),
            "messages[0].content",
        ),
        (
            ChatRequest(
                model="tiny",
                messages=(
                    ChatMessage.user("hi"),
                    ChatMessage.assistant(
                        None, tool_calls=(ToolCall(id="c1", name="f", arguments="{}"),)
                    ),
                ),
            ),
            "messages[1]",
        ),
    ],
)
async def test_what_the_runtime_does_not_serve_is_a_bad_request(
    tiny_model_dir: Path, request_: ChatRequest, param: str
) -> None:
    runner = await loaded(tiny_model_dir)
    with pytest.raises(BadRequest) as refused:
        await answer(runner, request_)
    assert refused.value.param == param


async def test_text_parts_and_system_messages_are_templated(tiny_model_dir: Path) -> None:
    runner = await loaded(tiny_model_dir)
    request = ChatRequest(
        model="tiny",
        messages=(ChatMessage.system("be brief"), ChatMessage.user((TextPart(text="hi"),))),
        sampling=SamplingParams(max_tokens=2),
    )
    chunks = await answer(runner, request)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.input_tokens > prompt_tokens(tiny_model_dir, "hi")


async def test_a_template_that_refuses_the_conversation_is_a_bad_request(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = await loaded(tiny_model_dir)
    loaded_state = runner._loaded
    assert loaded_state is not None

    def refuse(*args: object, **kwargs: object) -> str:
        raise ValueError("Conversation roles must alternate user/assistant")

    monkeypatch.setattr(loaded_state.tokenizer, "apply_chat_template", refuse)
    with pytest.raises(BadRequest, match="roles must alternate"):
        await answer(runner, chat())

    monkeypatch.setattr(loaded_state.tokenizer, "apply_chat_template", lambda *a, **k: "")
    with pytest.raises(BadRequest, match="empty prompt"):
        await answer(runner, chat())


# --------------------------------------------------------------------------- loading


def test_a_model_not_available_offline_is_a_config_error_naming_model() -> None:
    with pytest.raises(ConfigError) as caught:
        EngineBuilder().check(deployment("no-such-org/no-such-model"))
    assert "deployment 'tiny'.model" in str(caught.value)
    assert "not available offline" in str(caught.value)


def test_the_apply_check_names_each_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert model_source_problem(deployment(str(tiny_model_dir))) is None
    assert model_source_problem(deployment("x", model_path=str(tiny_model_dir))) is None
    assert model_source_problem(deployment("bad name with spaces")) is not None
    problem = model_source_problem(deployment("x", model_path=str(tmp_path / "missing")))
    assert problem is not None
    assert problem[0] == "runtime_config.model_path"
    problem = model_source_problem(deployment(str(tiny_model_dir), device="tpu"))
    assert problem is not None
    assert problem[0] == "runtime_config.device"


def test_a_model_in_the_hugging_face_cache_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = importlib.import_module("huggingface_hub")
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda name, file: f"/cache/{name}/{file}")
    assert model_source_problem(deployment("org/cached-model")) is None


def test_a_node_without_the_extra_refuses_at_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        transformers_runner.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch" else real(name, *a),
    )
    with pytest.raises(ConfigError) as caught:
        EngineBuilder().check(deployment("anything"))
    assert "deployment 'tiny'.runtime" in str(caught.value)
    assert EXTRA_INSTALL_HINT in str(caught.value)


def copy_without_chat_template(source: Path, target: Path) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = target / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"chat_template"', '"unused_template"'))
    return target


async def test_loading_failures_are_unrecoverable(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Unrecoverable, match="cannot load"):
        await loaded(tmp_path / "missing")
    torch = importlib.import_module("torch")
    absent = f"cuda:{max(7, torch.cuda.device_count())}"  # no GPU of that index here
    with pytest.raises(Unrecoverable, match=f"'{absent}' is not available"):
        await loaded(tiny_model_dir, device=absent)
    no_template = copy_without_chat_template(tiny_model_dir, tmp_path / "no-template")
    with pytest.raises(Unrecoverable, match="no chat template"):
        await loaded(no_template)


async def test_a_missing_extra_at_load_names_the_pip_command(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def without_torch(name: str, *args: Any) -> Any:
        if name == "torch":
            raise ImportError("No module named 'torch'", name="torch")
        return real(name, *args)

    monkeypatch.setattr(transformers_runner.importlib, "import_module", without_torch)
    with pytest.raises(Unrecoverable, match=r"rakka-inference\[transformers\]"):
        await loaded(tiny_model_dir)


async def test_out_of_memory_while_loading_is_out_of_memory(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transformers = importlib.import_module("transformers")

    def no_room(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_room)
    with pytest.raises(OutOfMemory):
        await loaded(tiny_model_dir)


def test_a_cache_the_batch_cannot_pad_and_trim_is_refused() -> None:
    from rakka_inference.local.decode_batch import check_plain_cache

    class DynamicLayer:
        pass

    class DynamicSlidingWindowLayer:
        pass

    class Cache:
        def __init__(self, *layers: object) -> None:
            self.layers = layers

    check_plain_cache(Cache(DynamicLayer(), DynamicLayer()))
    with pytest.raises(Unrecoverable, match="DynamicSlidingWindowLayer"):
        check_plain_cache(Cache(DynamicLayer(), DynamicSlidingWindowLayer()))


async def test_a_failing_warm_up_poisons_the_load(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rakka_inference.local import decode_batch

    def broken(self: object, token: int) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(decode_batch.DecodeBatch, "warm_up", broken)
    with pytest.raises(ContextPoisoned, match="device-side assert"):
        await loaded(tiny_model_dir)


# --------------------------------------------------------------------------- contract


async def test_the_runner_keeps_the_model_runner_contract(tiny_model_dir: Path) -> None:
    runner = TransformersRunner(deployment(str(tiny_model_dir)))
    assert isinstance(runner, ModelRunner)
    assert runner.runtime_kind is RuntimeKind.TRANSFORMERS
    placed = TransportKind.LOCAL_CPU if DEVICE == "cpu" else TransportKind.LOCAL_GPU
    assert runner.transport_kind.kind is placed
    assert runner.rate_limits == RateLimits()
    assert runner.estimate_cost(Usage(input_tokens=10)) == 0.0  # local: free unless priced
    assert runner.stats.steps == 0
    assert runner.batcher is None
    assert "not loaded" in repr(runner)
    with pytest.raises(RuntimeError, match="before load_weights"):
        await answer(runner, chat())
    with pytest.raises(RuntimeError, match="before load_weights"):
        runner.inject_fault(RuntimeError())
    await runner.rebuild_session(SessionRebuildCause.OPERATOR)  # nothing to rebuild
    assert runner.batcher is None
    await runner.rebuild_session(SessionRebuildCause.CONTEXT_POISONED)
    assert runner.batcher is not None
    assert f"on {DEVICE}, batches of up to 16" in runner.describe()
    gpu = TransformersRunner(deployment(str(tiny_model_dir), device="auto"))
    assert gpu.transport_kind.kind is TransportKind.LOCAL_GPU
    priced = TransformersRunner(
        deployment("m", pricing=ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0))
    )
    assert priced.estimate_cost(Usage(input_tokens=1_000_000)) == pytest.approx(1.0)


async def test_auto_picks_the_gpu_when_there_is_one_else_the_cpu(tiny_model_dir: Path) -> None:
    torch = importlib.import_module("torch")
    runner = await loaded(tiny_model_dir, device="auto")
    assert f"on {'cuda' if torch.cuda.is_available() else 'cpu'}" in runner.describe()


def test_other_runtimes_configs_are_refused() -> None:
    other = Deployment(
        name="x", model="m", runtime=RuntimeKind.OPENAI, runtime_config=OpenAIConfig()
    )
    with pytest.raises(TypeError, match="not configured for transformers"):
        TransformersRunner(other)


async def test_requests_joining_and_leaving_mid_flight_answer_as_alone(
    tiny_model_dir: Path,
) -> None:
    """Rows of different lengths join a running batch and leave it at different steps (the
    cache is padded on joining and trimmed on leaving); greedy answers do not change."""
    runner = await loaded(tiny_model_dir)
    requests = [
        chat("a long prompt, longer than the others: " * 3, max_tokens=4),
        chat("short", max_tokens=30),
        chat("medium sized prompt", max_tokens=9),
        chat("x", max_tokens=1),
    ]
    alone = [text_of(await answer(runner, request)) for request in requests]
    first = runner.execute(requests[1])
    head = await anext(first)
    rest = asyncio.gather(*(answer(runner, request) for request in requests[2:]))
    together = await asyncio.gather(answer(runner, requests[0]), rest)
    tail = [chunk async for chunk in first]
    assert text_of([head, *tail]) == alone[1]
    assert text_of(together[0]) == alone[0]
    assert [text_of(chunks) for chunks in together[1]] == alone[2:]
    assert runner.stats.max_batch_size >= 3


def test_every_end_of_sequence_token_the_model_names_ends_an_answer() -> None:
    from types import SimpleNamespace

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[5, 7]))
    tokenizer = SimpleNamespace(eos_token_id=2)
    assert transformers_runner._eos_ids(model, tokenizer) == {2, 5, 7}
