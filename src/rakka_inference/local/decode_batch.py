"""DecodeBatch: the running batch on the device, as the batcher's :class:`Decoder`.

How the KV cache is batched
===========================

The batch keeps **one** transformers ``DynamicCache`` for all its rows, left-padded:
every layer holds keys and values ``[rows, heads, width, head_dim]``, where ``width`` is
the longest row's length and a shorter row's cache starts with padding columns. A
``[rows, width]`` attention mask marks the padding, and each row's position ids count
its own tokens only, so the padding changes nothing in what a row attends to (this is
how ``generate`` runs a left-padded batch).

- **A newcomer joins** between steps: its prompt is prefilled alone (batch of one, no
  padding, so no row is ever all padding), which gives its cache and first token; then
  the shorter of the batch cache and the newcomer's cache is padded on the left to the
  other's width and the two are concatenated along the batch dimension.
- **A decode step** feeds every row's last token at once: ``input_ids [rows, 1]``, the
  mask with one more column, per-row positions. The model appends one column to the
  cache for every row.
- **A row leaves** (finished, cancelled): ``batch_select_indices`` keeps the others, and
  leading columns that are padding in every remaining row are cut off, so the width
  follows the longest *live* row.

Why this and not one cache per sequence merged at every step: merging would copy every
row's whole cache at every step; here copies happen only when the batch changes, and a
step costs what ``generate`` costs for a padded batch. The price is the padding: rows of
very different lengths waste ``width - length`` columns each, which is why the batch
trims when rows leave. Models whose cache is not a plain dynamic cache (sliding-window
or hybrid layers) are refused when the runner loads (:func:`check_plain_cache`).

Sampling is per row (:func:`sample_next`): temperature ``0`` is greedy, otherwise the
logits are scaled, cut to the ``top_p`` nucleus, and one token is drawn with the row's
own ``torch.Generator`` (seeded from the request's ``seed``): a row's draws never depend
on how many draws the other rows made. (Padding and batch size can still change the
logits in their last bits, so a seeded request repeats exactly under the same batching.)

torch and transformers are reached through :func:`importlib.import_module` and are
``Any`` to the type checker (as in :mod:`rakka_inference.local.torch_encoder`).
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from rakka_inference.core.errors import ContextPoisoned, EngineError, OutOfMemory, Unrecoverable
from rakka_inference.local.batcher import Prompt

__all__ = ["DecodeBatch", "RowSampling", "check_plain_cache", "engine_error", "sample_next"]

_PLAIN_LAYER = "DynamicLayer"


@dataclass(frozen=True, slots=True)
class RowSampling:
    """How one row draws its next token."""

    temperature: float
    top_p: float
    generator: Any
    """The row's ``torch.Generator``; ``None`` for greedy rows."""


def engine_error(torch: Any, error: BaseException) -> EngineError:
    """A failure of the device work as the engine's typed error.

    Out of memory (torch's ``OutOfMemoryError``, a ``RuntimeError`` saying so, or the
    host's ``MemoryError``) is :class:`OutOfMemory`: the context is intact. Anything else
    leaves the model's state unknown (a CUDA error poisons the whole context), so it is
    :class:`ContextPoisoned`. Our own typed errors pass through.
    """
    if isinstance(error, EngineError):
        return error
    kinds = tuple(
        kind
        for kind in (getattr(torch, "OutOfMemoryError", None), MemoryError)
        if isinstance(kind, type)
    )
    described = f"{type(error).__name__}: {error}"
    if isinstance(error, kinds) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    ):
        return OutOfMemory(f"out of memory on the device: {described}")
    return ContextPoisoned(f"the device work failed: {described}")


def check_plain_cache(cache: Any) -> None:
    """Refuse a model whose cache layers the batch cannot pad and trim."""
    kinds = {type(layer).__name__ for layer in cache.layers}
    if kinds != {_PLAIN_LAYER}:
        raise Unrecoverable(
            "the transformers runtime batches models with a plain dynamic KV cache only; "
            f"this model's cache has {', '.join(sorted(kinds))} layers"
        )


def sample_next(torch: Any, logits: Any, rows: Sequence[RowSampling]) -> list[int]:
    """The next token of each row of ``logits [rows, vocab]``; see the module docstring."""
    chosen: list[int] = logits.argmax(dim=-1).tolist()
    for index, row in enumerate(rows):
        if row.generator is None:
            continue
        scores = logits[index].float() / row.temperature
        if row.top_p < 1.0:
            scores, order = torch.sort(scores, descending=True)
            probs = torch.softmax(scores, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (at least the top token).
            outside = (torch.cumsum(probs, dim=-1) - probs) > row.top_p
            scores = scores.masked_fill(outside, float("-inf"))
            pick = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=row.generator)
            chosen[index] = int(order[pick])
        else:
            probs = torch.softmax(scores, dim=-1)
            chosen[index] = int(torch.multinomial(probs, 1, generator=row.generator))
    return chosen


class DecodeBatch:
    """The batch of one model on one device. Used by the decode thread only."""

    def __init__(self, torch: Any, transformers: Any, model: Any) -> None:
        self._torch = torch
        self._transformers = transformers
        self._model = model
        self._device = model.device
        self._keys: list[object] = []
        self._cache: Any = None
        self._mask: Any = None
        """``[rows, width]``: 1 for a real cache column, 0 for padding."""
        self._positions: list[int] = []
        """Each row's next position: the number of its tokens in the cache."""
        self._last: list[int] = []
        """Each row's newest token, not yet in the cache."""
        self._sampling: list[RowSampling] = []
        # transformers 5.x names the cache argument ``cache``; 4.x ``past_key_values``.
        # Either way the cache object passed in is the one updated.
        parameters = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"

    @property
    def keys(self) -> Sequence[object]:
        return self._keys

    @property
    def width(self) -> int:
        """The cache's width in columns (0 when empty)."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    def engine_error(self, error: BaseException) -> EngineError:
        return engine_error(self._torch, error)

    def prefill(self, key: object, prompt: Prompt) -> int:
        torch = self._torch
        sampling = self._sampling_for(prompt)
        with torch.inference_mode():
            cache = self.new_cache()
            ids = torch.tensor([prompt.ids], dtype=torch.long, device=self._device)
            out = self._model(
                input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}
            )
            token = sample_next(torch, out.logits[:, -1, :], (sampling,))[0]
            self._join(key, cache, len(prompt.ids), token, sampling)
        return token

    def warm_up(self, token: int) -> None:
        """One token through the model and back out: the first call's lazy set-up happens
        now, and a cache the batch cannot pad and trim is refused at load."""
        self.prefill(None, Prompt(ids=(token,), max_tokens=1, temperature=0.0))
        check_plain_cache(self._cache)
        self.reset()

    def new_cache(self) -> Any:
        """An empty cache for this model."""
        return self._transformers.DynamicCache(config=self._model.config)

    def step(self) -> Sequence[int]:
        torch = self._torch
        device = self._device
        rows = len(self._keys)
        with torch.inference_mode():
            mask = torch.cat(
                [self._mask, torch.ones((rows, 1), dtype=self._mask.dtype, device=device)], dim=1
            )
            out = self._model(
                input_ids=torch.tensor(self._last, dtype=torch.long, device=device)[:, None],
                attention_mask=mask,
                position_ids=torch.tensor(self._positions, dtype=torch.long, device=device)[
                    :, None
                ],
                use_cache=True,
                **{self._cache_arg: self._cache},
            )
            tokens = sample_next(torch, out.logits[:, -1, :], self._sampling)
        self._mask = mask
        self._positions = [position + 1 for position in self._positions]
        self._last = tokens
        return tokens

    def leave(self, keys: Collection[object]) -> None:
        keep = [index for index, key in enumerate(self._keys) if key not in keys]
        if len(keep) == len(self._keys):
            return
        if not keep:
            self.reset()
            return
        torch = self._torch
        with torch.inference_mode():
            selected = torch.tensor(keep, dtype=torch.long, device=self._device)
            self._cache.batch_select_indices(selected)
            mask = self._mask[selected]
            # Columns that are padding in every remaining row serve nobody: cut them.
            start = int(mask.any(dim=0).nonzero()[0])
            if start:
                for layer in self._cache.layers:
                    layer.keys = layer.keys[:, :, start:, :]
                    layer.values = layer.values[:, :, start:, :]
                mask = mask[:, start:]
        self._mask = mask
        self._keys = [self._keys[index] for index in keep]
        self._positions = [self._positions[index] for index in keep]
        self._last = [self._last[index] for index in keep]
        self._sampling = [self._sampling[index] for index in keep]

    def reset(self) -> None:
        self._keys, self._positions, self._last, self._sampling = [], [], [], []
        self._cache = self._mask = None

    # ------------------------------------------------------------------ internals

    def _sampling_for(self, prompt: Prompt) -> RowSampling:
        if prompt.temperature == 0:
            return RowSampling(0.0, 1.0, None)
        generator = self._torch.Generator(device=self._device)
        generator.manual_seed(prompt.seed if prompt.seed is not None else secrets.randbits(63))
        return RowSampling(prompt.temperature, prompt.top_p, generator)

    def _join(
        self, key: object, cache: Any, length: int, token: int, sampling: RowSampling
    ) -> None:
        torch = self._torch
        mask = torch.ones((1, length), dtype=torch.long, device=self._device)
        if self._cache is None:
            self._cache, self._mask = cache, mask
        else:
            width = max(self.width, length)
            for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat(
                    [_pad_left(torch, mine.keys, width), _pad_left(torch, theirs.keys, width)]
                )
                mine.values = torch.cat(
                    [_pad_left(torch, mine.values, width), _pad_left(torch, theirs.values, width)]
                )
            self._mask = torch.cat(
                [_pad_mask(torch, self._mask, width), _pad_mask(torch, mask, width)]
            )
        self._keys.append(key)
        self._positions.append(length)
        self._last.append(token)
        self._sampling.append(sampling)


def _pad_left(torch: Any, states: Any, width: int) -> Any:
    """``[rows, heads, length, dim]`` padded with zeros on the left to ``width`` columns."""
    missing = width - int(states.shape[2])
    return states if missing == 0 else torch.nn.functional.pad(states, (0, 0, missing, 0))


def _pad_mask(torch: Any, mask: Any, width: int) -> Any:
    missing = width - int(mask.shape[1])
    return mask if missing == 0 else torch.nn.functional.pad(mask, (missing, 0))
