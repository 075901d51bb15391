"""The sentence-transformers (torch) backend of the embeddings runner.

A thin adapter: sentence-transformers' ``SentenceTransformer`` behind the runner's
:class:`~rakka_inference.local.sentence_embed.SentenceEncoder` protocol. It is imported
only when the runner loads a model with this backend.

sentence-transformers and torch are reached through :func:`importlib.import_module`, so
they are ``Any`` to the type checker: their stubs are large (mypy would read all of
torch's), and the type check also runs where the ``embeddings`` extra is not installed.
What this module relies on of them is small and listed here:

- ``SentenceTransformer(path, device=..., local_files_only=True)``;
- ``.encode(texts, batch_size=, normalize_embeddings=, convert_to_numpy=True,
  show_progress_bar=False)``, a float32 array ``(len(texts), dimension)``;
- ``.tokenizer(texts, truncation=True, max_length=...)["input_ids"]`` and
  ``.max_seq_length``, to count the tokens the model read;
- ``.get_embedding_dimension()`` (``get_sentence_embedding_dimension()`` before
  sentence-transformers 5, where the new name does not exist yet and the old one warns);
- iterating the model yields its modules (a trailing ``Normalize`` means unit vectors);
- ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` in older torch).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from rakka_inference.core.errors import OutOfMemory

if TYPE_CHECKING:
    # ``unused-ignore``: mypy also runs where the ``embeddings`` extra is absent.
    import numpy as np  # type: ignore[import-not-found, unused-ignore]
    from numpy.typing import NDArray  # type: ignore[import-not-found, unused-ignore]

    Floats: TypeAlias = NDArray[np.float32]

__all__ = ["TorchSentenceEncoder"]


class TorchSentenceEncoder:
    """A loaded ``SentenceTransformer``. Build it with :meth:`load`."""

    backend = "sentence-transformers"

    def __init__(self, model: Any, oom_errors: tuple[type[BaseException], ...]) -> None:
        self._model = model
        self.oom_errors = oom_errors
        """torch's out-of-memory exception (a ``RuntimeError``), caught before others."""
        size = getattr(model, "get_embedding_dimension", None)
        if size is None:
            size = model.get_sentence_embedding_dimension
        self.dimension = int(size())
        self.normalizes = any(type(module).__name__ == "Normalize" for module in model)
        """Whether the model's pipeline ends in L2 normalisation (MiniLM's does)."""

    @classmethod
    def load(cls, model_dir: Path, device: str) -> TorchSentenceEncoder:
        """Load the model in ``model_dir`` onto ``device``, without touching the network.

        The offline switches are set before the first import of the Hugging Face
        libraries, which read them once; an operator's own setting is kept.
        """
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        sentence_transformers = importlib.import_module("sentence_transformers")
        torch = importlib.import_module("torch")
        kinds = {getattr(torch, "OutOfMemoryError", None)}
        kinds.add(getattr(torch.cuda, "OutOfMemoryError", None))
        oom_errors: tuple[type[BaseException], ...] = tuple(
            kind for kind in kinds if isinstance(kind, type) and issubclass(kind, BaseException)
        )
        try:
            model = sentence_transformers.SentenceTransformer(
                str(model_dir), device=device, local_files_only=True
            )
        except oom_errors as error:
            # A GPU short of memory now may not be later: the engine retries the load.
            raise OutOfMemory(f"out of memory loading {model_dir} onto {device}") from error
        return cls(model, oom_errors)

    def encode(
        self, texts: Sequence[str], *, batch_size: int, normalize: bool
    ) -> tuple[Floats, int]:
        """The vectors, in order, and the number of tokens read (special tokens included,
        after truncation to the model's ``max_seq_length``)."""
        import numpy as np  # noqa: PLC0415 - the extra's, as torch is

        model = self._model
        batch = list(texts)
        vectors = model.encode(
            batch,
            batch_size=batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        ids = model.tokenizer(batch, truncation=True, max_length=model.max_seq_length)
        tokens = sum(len(row) for row in ids["input_ids"])
        return np.asarray(vectors, dtype=np.float32), tokens
