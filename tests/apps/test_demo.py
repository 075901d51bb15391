"""``rakka demo`` shows every step it promises, in one run."""

from __future__ import annotations

import io

from rakka_inference.apps.demo import run_demo


async def test_every_demo_step_shows_what_it_should() -> None:
    out = io.StringIO()
    results = await run_demo(out)
    assert [r.name for r in results] == [
        "happy path",
        "429 with Retry-After",
        "circuit opens after 503s",
        "fallback to a second provider",
        "key rotation under load",
    ]
    assert all(r.ok for r in results), out.getvalue()
    text = out.getvalue()
    assert "[1/5] happy path" in text
    assert "report" in text
    assert "sk-demo" not in text  # keys never printed
