"""The suite's leaked-task guard fails a test that leaves a task running."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")


def test_a_leaked_task_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_leaky="""
import asyncio

async def test_leaks():
    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="forgotten")

async def test_cleans_up():
    task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    task.cancel()

def test_sync_is_untouched():
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*test leaked 1 running task(s): forgotten*"])
