"""rakka-inference: one supervised actor topology serving LLM requests wherever the model runs.

Layers, imports pointing one way (``core`` imports nothing of ours; ``providers`` never
import ``runtime``):

- :mod:`rakka_inference.core` — pure values and errors: deployments, requests, chunks,
  usage, prices, secrets, configuration;
- :mod:`rakka_inference.actors` — the asyncio actor kernel and its supervision;
- :mod:`rakka_inference.remote` — provider-neutral remote infrastructure;
- :mod:`rakka_inference.providers` — one adapter module per provider wire format;
- :mod:`rakka_inference.runtime` — the actor topology: gateway, request, coordinator, engines;
- :mod:`rakka_inference.local` — local model runners;
- :mod:`rakka_inference.testkit` — shipped test doubles;
- :mod:`rakka_inference.apps.cli` — the ``rakka`` command.
"""

__version__ = "0.1.0"
