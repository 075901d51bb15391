"""The tiny chat model the transformers-runtime tests load (built once per session), and
the device they load it onto.

``RAKKA_TEST_DEVICE`` (``cpu`` when unset) is the ``TransformersConfig.device`` of every
test that runs the transformers runner on the tiny model: ``cuda`` (or ``cuda:N``) runs the
same tests on a GPU (``bench/gpu_check.sh`` does). Each test module that builds such a
runner reads it into its ``DEVICE``; this file refuses a value that is not a device before
any test runs, and names the device in the report header.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from engine_support import StandIn

DEVICE_VARIABLE = "RAKKA_TEST_DEVICE"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def pytest_configure(config: pytest.Config) -> None:
    device = os.environ.get(DEVICE_VARIABLE, "cpu")
    if not _DEVICE.fullmatch(device):
        raise pytest.UsageError(
            f"{DEVICE_VARIABLE}={device!r} is not a device the runner tests run on: "
            "use 'cpu', 'cuda' or 'cuda:N'"
        )


def pytest_report_header(config: pytest.Config) -> str:
    device = os.environ.get(DEVICE_VARIABLE, "cpu")
    return f"transformers runner tests on: {device} (${DEVICE_VARIABLE})"


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


@pytest.fixture
def stand_in(tmp_path: Path) -> StandIn:
    """The stand-in engine's directory for one test (its faults, its start records)."""
    return StandIn(tmp_path)
