"""A BERT sentence encoder in plain numpy: all-MiniLM-L6-v2 without torch.

Why it exists: PyPI's only torch build for Linux pulls about 3 GB of CUDA libraries, a
heavy price for a 90 MB CPU model. This module runs the same forward pass on numpy, reading
the weights with ``safetensors.numpy`` and tokenizing with ``tokenizers`` from the model
directory's ``tokenizer.json``. The runner
(:class:`~rakka_inference.local.sentence_embed.SentenceTransformersRunner`) uses it when
sentence-transformers is not installed. Its vectors match sentence-transformers' to
within 2e-7 per component (``tests/local/test_minilm_numpy.py`` compares them).

The computation
===============

For token ids ``ids`` of shape ``(B, L)`` and the attention mask ``m`` (1 for a real
token, 0 for padding), with hidden size ``H`` split into ``h`` heads of ``d = H / h``::

    x = LN(word[ids] + position[0:L] + token_type[0])
    for each layer:
        q, k, v = split(x @ W_qkv + b_qkv)                  per head, (B, h, L, d)
        a = softmax(q @ kᵀ / √d + (1 - m) · MIN) @ v         padding gets no weight
        x = LN(x + merge(a) @ W_o + b_o)
        x = LN(x + GELU(x @ W_in + b_in) @ W_out + b_out)
    vector = Σ_t m_t · x_t / Σ_t m_t                         mean over real tokens

then the vector is scaled to unit length when the model's ``modules.json`` ends with a
``Normalize`` module (all-MiniLM-L6-v2's does) or the caller asks for it. ``LN`` is layer
normalisation with the model's epsilon, ``GELU`` the exact (erf) form BERT uses. Weights
are stored as torch's ``Linear`` keeps them, ``(out, in)``; they are transposed (and
q, k, v fused into one matrix) once, at load.

Only what MiniLM needs is supported: a ``bert`` model with absolute positions, the ``gelu``
activation and mean pooling. Anything else is refused at load with a ``ValueError``.
Inputs longer than the model's ``max_seq_length`` (256 for MiniLM) are truncated, as
sentence-transformers does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

# The ``embeddings`` extra provides these; the runner imports this module only when they
# are installed. ``unused-ignore``: mypy also runs where the extra is absent.
import numpy as np  # type: ignore[import-not-found, unused-ignore]
from numpy.typing import NDArray  # type: ignore[import-not-found, unused-ignore]
from safetensors.numpy import load_file  # type: ignore[import-not-found, unused-ignore]
from tokenizers import Tokenizer  # type: ignore[import-not-found, unused-ignore]

__all__ = ["BertSentenceEncoder"]

Floats: TypeAlias = NDArray[np.float32]

_MASKED = float(np.finfo(np.float32).min)
"""Added to the attention scores of padding: its softmax weight becomes exactly 0."""
_NORM_FLOOR = 1e-12
"""No division by zero when normalising a zero vector (torch's ``F.normalize`` eps)."""


def _erf(x: Floats) -> Floats:
    """The error function, to 1.5e-7 (Abramowitz & Stegun 7.1.26), 4e-7 in float32: a
    few float32 steps, well inside the noise of the model's float32 weights.

    numpy has no erf; scipy has one, but is not worth a dependency for one function.
    """
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    result: Floats = sign * (1.0 - poly * np.exp(-a * a))
    return result


def _gelu(x: Floats) -> Floats:
    result: Floats = 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))
    return result


def _layer_norm(x: Floats, gamma: Floats, beta: Floats, eps: float) -> Floats:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    result: Floats = centred / np.sqrt(variance + np.float32(eps)) * gamma + beta
    return result


@dataclass(frozen=True, slots=True)
class _Layer:
    """One transformer layer's weights, laid out for ``x @ W``."""

    qkv_w: Floats  # (H, 3H): query, key and value side by side
    qkv_b: Floats
    attn_out_w: Floats
    attn_out_b: Floats
    attn_ln_g: Floats
    attn_ln_b: Floats
    ffn_in_w: Floats
    ffn_in_b: Floats
    ffn_out_w: Floats
    ffn_out_b: Floats
    ffn_ln_g: Floats
    ffn_ln_b: Floats


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        data = json.load(file)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _check_supported(config: Mapping[str, Any], pooling: Mapping[str, Any]) -> None:
    problems = []
    if config.get("model_type") != "bert":
        problems.append(f"model_type {config.get('model_type')!r} (only 'bert')")
    if config.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {config.get('hidden_act')!r} (only 'gelu')")
    if config.get("position_embedding_type", "absolute") != "absolute":
        problems.append("position_embedding_type (only 'absolute')")
    other_pooling = [
        key
        for key, value in pooling.items()
        if key.startswith("pooling_mode_") and key != "pooling_mode_mean_tokens" and value
    ]
    if not pooling.get("pooling_mode_mean_tokens", False) or other_pooling:
        problems.append("pooling (only mean pooling)")
    if problems:
        raise ValueError("the numpy encoder does not support " + ", ".join(problems))


class BertSentenceEncoder:
    """A BERT encoder with mean pooling, loaded from a sentence-transformers directory.

    Build it with :meth:`load`. :meth:`encode` is thread-safe (it only reads the
    weights) and releases the GIL in numpy's matrix products and the tokenizer.
    """

    backend = "numpy"

    def __init__(
        self,
        *,
        tokenizer: Any,
        word: Floats,
        position: Floats,
        token_type: Floats,
        embed_ln: tuple[Floats, Floats],
        layers: Sequence[_Layer],
        heads: int,
        eps: float,
        normalizes: bool,
    ) -> None:
        self._tokenizer = tokenizer
        self._word = word
        self._position = position
        self._token_type = token_type
        self._embed_ln = embed_ln
        self._layers = tuple(layers)
        self._heads = heads
        self._eps = eps
        self.normalizes = normalizes
        """Whether the model's own pipeline ends with L2 normalisation."""
        self.max_seq_length = int(position.shape[0])
        self.oom_errors: tuple[type[BaseException], ...] = ()
        """numpy reports exhausted memory as ``MemoryError``; nothing else to catch."""

    @property
    def dimension(self) -> int:
        """The size of the vectors (384 for MiniLM)."""
        return int(self._word.shape[1])

    @classmethod
    def load(cls, model_dir: Path) -> BertSentenceEncoder:
        """Read a sentence-transformers model directory: ``config.json``,
        ``model.safetensors``, ``tokenizer.json`` and the pooling and length settings.

        Raises ``OSError`` for a missing file and ``ValueError`` for a model this encoder
        cannot run.
        """
        config = _read_json(model_dir / "config.json")
        pooling_file = model_dir / "1_Pooling" / "config.json"
        pooling = _read_json(pooling_file) if pooling_file.exists() else {}
        _check_supported(config, pooling)
        modules_file = model_dir / "modules.json"
        modules = json.loads(modules_file.read_text("utf-8")) if modules_file.exists() else []
        normalizes = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
        bert_file = model_dir / "sentence_bert_config.json"
        bert_config = _read_json(bert_file) if bert_file.exists() else {}

        weights = load_file(str(model_dir / "model.safetensors"))
        # A checkpoint saved from a task model prefixes the encoder's names with "bert.".
        weights = {name.removeprefix("bert."): value for name, value in weights.items()}

        def tensor(name: str) -> Floats:
            try:
                value = weights[name]
            except KeyError:
                raise ValueError(f"model.safetensors has no tensor {name!r}") from None
            return np.asarray(value, dtype=np.float32)

        def linear(prefix: str) -> tuple[Floats, Floats]:
            return np.ascontiguousarray(tensor(f"{prefix}.weight").T), tensor(f"{prefix}.bias")

        layers = []
        for index in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{index}"
            q_w, q_b = linear(f"{p}.attention.self.query")
            k_w, k_b = linear(f"{p}.attention.self.key")
            v_w, v_b = linear(f"{p}.attention.self.value")
            out_w, out_b = linear(f"{p}.attention.output.dense")
            in_w, in_b = linear(f"{p}.intermediate.dense")
            down_w, down_b = linear(f"{p}.output.dense")
            layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(np.concatenate([q_w, k_w, v_w], axis=1)),
                    qkv_b=np.concatenate([q_b, k_b, v_b]),
                    attn_out_w=out_w,
                    attn_out_b=out_b,
                    attn_ln_g=tensor(f"{p}.attention.output.LayerNorm.weight"),
                    attn_ln_b=tensor(f"{p}.attention.output.LayerNorm.bias"),
                    ffn_in_w=in_w,
                    ffn_in_b=in_b,
                    ffn_out_w=down_w,
                    ffn_out_b=down_b,
                    ffn_ln_g=tensor(f"{p}.output.LayerNorm.weight"),
                    ffn_ln_b=tensor(f"{p}.output.LayerNorm.bias"),
                )
            )

        max_positions = int(config["max_position_embeddings"])
        max_length = min(int(bert_config.get("max_seq_length", max_positions)), max_positions)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json carries its own padding and truncation (128, fixed, for MiniLM):
        # replace them with the model's length; batches are padded here, to their longest.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not a multiple of {heads} heads")
        return cls(
            tokenizer=tokenizer,
            word=tensor("embeddings.word_embeddings.weight"),
            position=tensor("embeddings.position_embeddings.weight")[:max_length],
            token_type=tensor("embeddings.token_type_embeddings.weight")[0],
            embed_ln=(
                tensor("embeddings.LayerNorm.weight"),
                tensor("embeddings.LayerNorm.bias"),
            ),
            layers=layers,
            heads=heads,
            eps=float(config.get("layer_norm_eps", 1e-12)),
            normalizes=normalizes,
        )

    # ------------------------------------------------------------------ encoding

    def encode(
        self, texts: Sequence[str], *, batch_size: int, normalize: bool
    ) -> tuple[Floats, int]:
        """One vector per text, in order, and the number of tokens read (special tokens
        and truncation included). Unit length when ``normalize`` or the model says so."""
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = [list(encoding.ids) for encoding in encodings]
        vectors = np.empty((len(ids), self.dimension), dtype=np.float32)
        # Longest first, as sentence-transformers does: batches of similar lengths pad less.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            vectors[chunk] = self._encode_batch([ids[i] for i in chunk])
        if normalize or self.normalizes:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors /= np.maximum(norms, _NORM_FLOOR)
        return vectors, sum(len(row) for row in ids)

    def _encode_batch(self, rows: Sequence[Sequence[int]]) -> Floats:
        longest = max(len(row) for row in rows)
        ids = np.zeros((len(rows), longest), dtype=np.int64)  # 0 is BERT's [PAD]
        mask = np.zeros((len(rows), longest), dtype=np.float32)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
            mask[index, : len(row)] = 1.0
        hidden = self._hidden_states(ids, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled: Floats = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return pooled

    def _hidden_states(self, ids: NDArray[np.int64], mask: Floats) -> Floats:
        batch, length = ids.shape
        x = self._word[ids] + self._position[:length] + self._token_type
        # (B·L, H) from here on: one matrix product per weight, not one per sequence.
        x = _layer_norm(x.reshape(batch * length, -1), *self._embed_ln, self._eps)
        bias = ((1.0 - mask) * np.float32(_MASKED))[:, None, None, :]  # (B, 1, 1, L)
        for layer in self._layers:
            x = self._layer(x, bias, layer)
        return x.reshape(batch, length, -1)

    def _layer(self, x: Floats, bias: Floats, layer: _Layer) -> Floats:
        batch, _, _, length = bias.shape
        hidden = x.shape[1]
        heads = self._heads
        size = hidden // heads
        qkv = x @ layer.qkv_w + layer.qkv_b  # (B·L, 3H)
        # (3, B, h, L, d), made contiguous so the batched products below run in BLAS.
        qkv = np.ascontiguousarray(
            qkv.reshape(batch, length, 3, heads, size).transpose(2, 0, 3, 1, 4)
        )
        query, key, value = qkv[0], qkv[1], qkv[2]
        scores = query @ key.transpose(0, 1, 3, 2)
        scores *= np.float32(1.0 / math.sqrt(size))
        scores += bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ value).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
        attended = context @ layer.attn_out_w + layer.attn_out_b
        x = _layer_norm(x + attended, layer.attn_ln_g, layer.attn_ln_b, self._eps)
        inner = _gelu(x @ layer.ffn_in_w + layer.ffn_in_b)
        out = inner @ layer.ffn_out_w + layer.ffn_out_b
        return _layer_norm(x + out, layer.ffn_ln_g, layer.ffn_ln_b, self._eps)
