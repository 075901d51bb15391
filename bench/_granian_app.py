"""The import target granian serves in ``bench/server_choice.py``: ``rakka serve``'s app.

    RAKKA_BENCH_CONFIG=rakka.toml granian --interface asgi --factory bench/_granian_app.py:app

builds the same :class:`~rakka_inference.apps.serve.ServeApp` that ``rakka serve --config`` hands
to uvicorn; its ASGI lifespan builds the topology inside granian's event loop, as it does
inside uvicorn's. The subclass only adds a line to the log once the lifespan shutdown has
stopped the topology, so the benchmark can tell that granian ran it; requests take the very
same path (``ServeApp.__call__`` is not overridden).
"""

from __future__ import annotations

import os

from rakka_inference.apps.serve import ServeApp
from rakka_inference.core.config import load_config

CONFIG_VARIABLE = "RAKKA_BENCH_CONFIG"
STOPPED_LINE = "rakka-bench: lifespan shutdown done"


class _BenchServeApp(ServeApp):
    async def shutdown(self) -> None:
        await super().shutdown()
        print(STOPPED_LINE, flush=True)


def app() -> ServeApp:
    """A new gateway app for the config file named by ``$RAKKA_BENCH_CONFIG``."""
    config = load_config(os.environ[CONFIG_VARIABLE])
    return _BenchServeApp(config, bind=config.cluster.bind)
