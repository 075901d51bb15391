"""Pinning a benchmark to one core, for the scripts that time code in this process."""

from __future__ import annotations

import os


def pin_to_one_core() -> str:
    """Run this process on its first allowed core; say which, for the report."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    core = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"
