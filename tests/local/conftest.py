"""The tiny chat model the transformers-runtime tests load (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("torch", "transformers", "tokenizers"):
        pytest.importorskip(
            module,
            reason=f"the 'transformers' extra is not installed ({module} is missing): "
            "pip install 'rakka-inference[transformers]'",
        )
    from rakka_inference.local.tiny_model import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-llama"))
