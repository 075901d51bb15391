"""A tiny chat model built offline: a real tokenizer and a randomly initialised Llama.

For the tests, the bench and trying the ``transformers`` runtime on a machine with no
weights: :func:`build_tiny_chat_model` writes a directory that
:class:`~rakka_inference.local.transformers_runner.TransformersRunner` loads through its
ordinary path (``from_pretrained(..., local_files_only=True)``). Its answers are noise,
but every part of serving is real: a byte-level BPE tokenizer trained on a few sentences
(so a multi-byte character can span tokens), a chat template, special tokens, and a
Llama with a KV cache.

The end-of-sequence token's output row is zeroed, so greedy decoding never ends by
itself (its logit is 0, below the best of the others): greedy answers run to their cap,
which makes ``length`` and batching tests exact. Needs the ``transformers`` extra.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_chat_model"]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>"
    "{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Continuous batching lets many requests share one decode step.",
    "Un café crème, s'il vous plaît: déjà vu à Zürich.",
    "日本語のテキストと絵文字 🎉 も少し。",
    "Streams of tokens become text, one chunk at a time.",
)


def build_tiny_chat_model(
    directory: Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 256,
    seed: int = 0,
) -> Path:
    """Write the tokenizer and model to ``directory`` (created); return it."""
    tokenizers = importlib.import_module("tokenizers")
    transformers = importlib.import_module("transformers")
    torch = importlib.import_module("torch")

    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",  # noqa: S106 - a special token, not a password
        eos_token="</s>",  # noqa: S106
        pad_token="<pad>",  # noqa: S106
        model_max_length=max_positions,
    )
    fast.chat_template = CHAT_TEMPLATE
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)

    config = transformers.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[fast.eos_token_id].zero_()
    model.save_pretrained(directory)
    return directory
