"""TransformersRunner: chat completions on a Hugging Face transformers model, in process.

The runner of the ``transformers`` runtime. It needs the optional extra:
``pip install 'rakka-inference[transformers]'`` (torch and transformers), imported only
when a runner loads, so a build or a ``rakka serve`` without a transformers deployment
never imports torch.

Where the model comes from
==========================

Nothing is ever downloaded: ``HF_HUB_OFFLINE`` defaults to ``1`` and every
``from_pretrained`` is called with ``local_files_only=True``. The model is
``runtime_config.model_path`` when set, else the deployment's ``model``: a local
directory, or a name already in the local Hugging Face cache (``HF_HOME``).
:func:`model_source_problem` is what :meth:`~rakka_inference.runtime.replicas.
EngineBuilder.check` asks before a deployment is applied: a missing extra, a model not
available offline or an unknown ``device`` is a ``ConfigError`` naming the field.
``runtime_config.device`` is ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``,
``"cuda"`` or ``"cuda:N"``. Loading runs on a worker thread (``asyncio.to_thread``).

Serving
=======

The request's messages go through the tokenizer's chat template (with the generation
prompt), then join the runner's continuous batch (:mod:`rakka_inference.local.batcher`
schedules, :mod:`rakka_inference.local.decode_batch` runs the model, both on the decode
thread; :mod:`rakka_inference.local.decode_text` turns tokens into text). The answer
streams as it decodes: no chunk ends inside a UTF-8 character, the text before a stop
sequence is sent and the stop is not, and the last chunk carries the finish reason
(``stop`` at the end-of-sequence token or a stop sequence, ``length`` at the cap) and the
exact token counts. The cap is the request's ``max_tokens``, else
``runtime_config.max_new_tokens_default``, and never past the model's context.
``temperature`` 0 is greedy; ``top_p`` and ``seed`` (a generator per request) apply
otherwise. Closing the ``execute`` generator frees the request's slot at the next step.

What is not served, each a ``BadRequest`` naming the field: ``n`` above 1, ``logprobs``
and ``top_logprobs``, tools, ``response_format`` other than text, presence and frequency
penalties, a reasoning effort, ``top_k``, images, and tool messages.

Errors
======

=====================================  ==================  ===============================
what happened                          raised              why that class
=====================================  ==================  ===============================
the extra is not installed             Unrecoverable       a restart cannot install it
the model cannot be found or read,     Unrecoverable       the same on every retry
no chat template, an unusable cache,
a CUDA device that is not there
out of memory while loading            OutOfMemory         the engine retries the load
out of memory while decoding           OutOfMemory         the requests of that step fail;
                                                           the context stays
any other failure of the device work   ContextPoisoned     the model's state is unknown
a prompt longer than the context       ContextLengthExceeded  ``param="messages"``
a conversation the template refuses    BadRequest          the client's to fix
=====================================  ==================  ===============================
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    BadRequest,
    ContextLengthExceeded,
    InferenceError,
    OutOfMemory,
    RakkaError,
    Unrecoverable,
)
from rakka_inference.core.messages import (
    ChatRequest,
    Role,
    TextPart,
    refuse_choices_and_logprobs,
    refuse_openai_options,
)
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.pricing import cost_usd, resolve_price
from rakka_inference.core.runner import SessionRebuildCause, Transport
from rakka_inference.core.runtimes import RuntimeKind, TransformersConfig
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.usage import Usage
from rakka_inference.local.batcher import BatchStats, ContinuousBatcher, Prompt

__all__ = ["EXTRA_INSTALL_HINT", "TransformersRunner", "model_source_problem", "refuse_unsupported"]

log = logging.getLogger("rakka_inference.local.transformers_runner")

EXTRA_INSTALL_HINT = "pip install 'rakka-inference[transformers]'"

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_UNBOUNDED = 1 << 30
"""Tokenizers without a length say ``model_max_length`` is about 1e30."""


def model_source_problem(deployment: Deployment) -> tuple[str, str] | None:
    """Why this node cannot serve ``deployment`` offline: (field, reason); ``None`` if it can.

    Imports neither torch nor transformers: the extra is looked up, and the Hugging Face
    cache is asked through ``huggingface_hub`` (a light import).
    """
    config = deployment.runtime_config
    assert isinstance(config, TransformersConfig)
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        return "runtime", (
            f"the transformers runtime needs {' and '.join(missing)}, which this node lacks: "
            f"{EXTRA_INSTALL_HINT}"
        )
    if not _DEVICE.fullmatch(config.device):
        return "runtime_config.device", (
            f"{config.device!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )
    if config.model_path is not None:
        if Path(config.model_path).expanduser().is_dir():
            return None
        return "runtime_config.model_path", f"{config.model_path!r} is not a directory"
    if Path(deployment.model).expanduser().is_dir() or _in_hf_cache(deployment.model):
        return None
    return "model", (
        f"{deployment.model!r} is not available offline: name a local model directory or a "
        "model already in the Hugging Face cache (HF_HOME), or set runtime_config.model_path"
    )


def _in_hf_cache(name: str) -> bool:
    _offline()
    hub = importlib.import_module("huggingface_hub")
    try:
        found = hub.try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repository name (HFValidationError)
        return False
    return isinstance(found, str)


def _offline() -> None:
    """Before the first import of the Hugging Face libraries, which read these once; an
    operator's own setting is kept."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A loaded model and the batcher serving it (one per context and rebuild)."""

    torch: Any
    tokenizer: Any
    device: str
    max_length: int | None
    batcher: ContinuousBatcher


class TransformersRunner:
    """Local chat on a transformers causal LM, continuously batched.

    Built by the engine for each context (first load and every rebuild); cheap to build,
    with no import of the extra until :meth:`load_weights`. ``max_batch_size`` defaults to
    the deployment's ``max_concurrent``; ``1`` serves one request at a time (the bench's
    baseline).
    """

    def __init__(self, deployment: Deployment, *, max_batch_size: int | None = None) -> None:
        config = deployment.runtime_config
        if not isinstance(config, TransformersConfig):
            raise TypeError(f"deployment {deployment.name!r} is not configured for transformers")
        self._deployment = deployment
        self._config = config
        self._max_batch_size = max_batch_size or max(1, deployment.serving.max_concurrent)
        self._transport = Transport.local_cpu() if config.device == "cpu" else Transport.local_gpu()
        self._price = resolve_price(deployment.upstream_model, deployment.pricing, local=True)
        self._loaded: _Loaded | None = None

    # ------------------------------------------------------------------ properties

    @property
    def runtime_kind(self) -> RuntimeKind:
        return RuntimeKind.TRANSFORMERS

    @property
    def transport_kind(self) -> Transport:
        """The CPU for ``device = "cpu"``; a GPU otherwise (``auto`` prefers one)."""
        return self._transport

    @property
    def rate_limits(self) -> RateLimits:
        return RateLimits()  # a local model: the engine's concurrency is the only limit

    def estimate_cost(self, usage: Usage) -> float | None:
        return None if self._price is None else cost_usd(usage, self._price)

    @property
    def batch_size(self) -> int:
        """Requests in the decode batch or waiting to join it (0 before loading, or idle)."""
        loaded = self._loaded
        return 0 if loaded is None else loaded.batcher.active

    @property
    def stats(self) -> BatchStats:
        """What the current context's decode loop has done (zeros before loading)."""
        loaded = self._loaded
        return BatchStats(0, 0, 0, 0) if loaded is None else loaded.batcher.stats

    @property
    def batcher(self) -> ContinuousBatcher | None:
        """The current context's batcher, ``None`` before :meth:`load_weights`."""
        return None if self._loaded is None else self._loaded.batcher

    def describe(self) -> str:
        """One line for logs and the admin API."""
        loaded = self._loaded
        state = (
            "not loaded"
            if loaded is None
            else f"on {loaded.device}, batches of up to {loaded.batcher.max_batch_size}"
        )
        return f"transformers runner of {self._deployment.name!r}: {self._source()!r}, {state}"

    def __repr__(self) -> str:
        return f"<TransformersRunner {self.describe()}>"

    # ------------------------------------------------------------------ lifecycle

    async def load_weights(self) -> None:
        """Load the model offline on a worker thread. See the module docstring."""
        self._loaded = await asyncio.to_thread(self._load)
        log.info("loaded: %s", self.describe())

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        """Load the model again for a changed configuration or a poisoned context.

        Requests in flight finish on the old model and its batcher; later ones use the new
        one. There is no credential, so the other causes change nothing.
        """
        if cause in (SessionRebuildCause.CONFIG_CHANGED, SessionRebuildCause.CONTEXT_POISONED):
            await self.load_weights()

    def _source(self) -> str:
        return self._config.model_path or self._deployment.model

    def _load(self) -> _Loaded:
        _offline()
        try:
            torch = importlib.import_module("torch")
            transformers = importlib.import_module("transformers")
            from rakka_inference.local.decode_batch import DecodeBatch  # noqa: PLC0415
        except ImportError as error:
            raise Unrecoverable(
                f"deployment {self._deployment.name!r}: the transformers runtime needs the "
                f"optional 'transformers' extra, which is not installed ({error}); install "
                f"it with: {EXTRA_INSTALL_HINT}"
            ) from error
        device = self._device(torch)
        source = str(Path(self._source()).expanduser())
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                source,
                local_files_only=True,
                dtype=torch.float32 if device == "cpu" else "auto",
            )
            model.to(device).eval()
        except (MemoryError, torch.OutOfMemoryError) as error:
            raise OutOfMemory(f"out of memory loading {source} onto {device}") from error
        except Exception as error:
            reason = f"cannot load {source!r}: {type(error).__name__}: {error}"
            raise self._unrecoverable(reason) from error
        if not tokenizer.chat_template:
            raise self._unrecoverable(f"the tokenizer of {source!r} has no chat template")
        decoder = DecodeBatch(torch, transformers, model)
        try:
            decoder.warm_up(tokenizer.bos_token_id or 0)
        except RakkaError:
            raise
        except Exception as error:
            raise decoder.engine_error(error) from error
        batcher = ContinuousBatcher(
            decoder,
            prepare=self._prepare,
            decode=lambda ids: str(
                tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            ),
            eos_ids=_eos_ids(model, tokenizer),
            max_batch_size=self._max_batch_size,
            name=f"decode:{self._deployment.name}",
        )
        return _Loaded(torch, tokenizer, device, _max_length(model, tokenizer), batcher)

    def _device(self, torch: Any) -> str:
        device = self._config.device
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                raise self._unrecoverable(f"device {device!r} is not available on this node")
        return device

    def _unrecoverable(self, reason: str) -> Unrecoverable:
        return Unrecoverable(f"deployment {self._deployment.name!r}: {reason}")

    # ------------------------------------------------------------------ serving

    async def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        """Stream the answer as it decodes; closing the generator frees the slot."""
        loaded = self._loaded
        if loaded is None:
            raise RuntimeError("TransformersRunner.execute() before load_weights()")
        refuse_unsupported(request)
        batcher = loaded.batcher
        ticket = batcher.submit(request)
        try:
            while True:
                event = await ticket.next_event()
                if isinstance(event, InferenceError):
                    raise event
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            batcher.cancel(ticket)

    def _prepare(self, request: ChatRequest) -> Prompt:
        """On the decode thread: the chat template, the tokens, the limits."""
        loaded = self._loaded
        assert loaded is not None
        tokenizer = loaded.tokenizer
        conversation = _conversation(request)
        try:
            text = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        except Exception as error:  # the template's raise_exception(), or content it rejects
            raise BadRequest(
                f"the model's chat template refused the conversation: {error}", param="messages"
            ) from error
        ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise BadRequest("the conversation makes an empty prompt", param="messages")
        limit = loaded.max_length
        if limit is not None and len(ids) >= limit:
            raise ContextLengthExceeded(
                f"the prompt is {len(ids)} tokens; the model's context holds {limit}, "
                "with room for at least one generated token",
                param="messages",
            )
        cap = request.max_output_tokens(self._config.max_new_tokens_default)
        if limit is not None:
            cap = min(cap, limit - len(ids))
        sampling = request.sampling
        return Prompt(
            ids=ids,
            max_tokens=cap,
            temperature=1.0 if sampling.temperature is None else sampling.temperature,
            top_p=1.0 if sampling.top_p is None else sampling.top_p,
            seed=sampling.seed,
            stops=sampling.stop,
        )

    def inject_fault(self, error: BaseException) -> None:
        """Make the current context's next decode step fail with ``error`` (tests)."""
        loaded = self._loaded
        if loaded is None:
            raise RuntimeError("TransformersRunner.inject_fault() before load_weights()")
        loaded.batcher.inject_fault(error)


def refuse_unsupported(request: ChatRequest) -> None:
    sampling = request.sampling
    refuse_choices_and_logprobs(sampling, "the transformers runtime")
    if request.tools or request.tool_choice is not None:
        raise BadRequest("the transformers runtime does not call tools", param="tools")
    if request.response_format is not None and request.response_format.type != "text":
        raise BadRequest(
            "the transformers runtime answers in free text only", param="response_format"
        )
    refuse_openai_options(request, "the transformers runtime")
    for name in ("presence_penalty", "frequency_penalty", "reasoning_effort", "top_k"):
        if getattr(sampling, name):
            raise BadRequest(f"the transformers runtime does not apply {name}", param=name)
    if sampling.thinking_budget is not None:
        raise BadRequest("the transformers runtime does not think", param="thinking")
    for index, message in enumerate(request.messages):
        if message.thought_only:
            continue  # prior thinking has no place in a chat template: it is left out
        if message.role not in _TEMPLATE_ROLES or message.tool_calls:
            raise BadRequest(
                "the transformers runtime does not take tool calls or tool messages",
                param=f"messages[{index}]",
            )
        if any(not isinstance(part, TextPart) for part in message.parts):
            raise BadRequest(
                "the transformers runtime takes text only, not images or documents",
                param=f"messages[{index}].content",
            )


_TEMPLATE_ROLES: Mapping[Role, str] = {
    Role.SYSTEM: "system",
    Role.DEVELOPER: "system",
    Role.USER: "user",
    Role.ASSISTANT: "assistant",
}


def _conversation(request: ChatRequest) -> list[dict[str, str]]:
    """The messages as chat templates take them: role and text (a request
    :func:`refuse_unsupported` let through)."""
    return [
        {"role": _TEMPLATE_ROLES[message.role], "content": message.text}
        for message in request.messages
        if not message.thought_only
    ]


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for found in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(found, int):
            ids.add(found)
        elif isinstance(found, Sequence):
            ids.update(int(token) for token in found)
    return frozenset(ids)


def _max_length(model: Any, tokenizer: Any) -> int | None:
    lengths = [
        length
        for length in (
            getattr(model.config, "max_position_embeddings", None),
            getattr(tokenizer, "model_max_length", None),
        )
        if isinstance(length, int) and 0 < length < _UNBOUNDED
    ]
    return min(lengths, default=None)
