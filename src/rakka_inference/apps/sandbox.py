"""The embedded default of ``rakka serve`` with no config: a sandbox that needs no keys.

The testkit's mock providers run in this process, and four deployments point at them:
``sandbox-gpt`` (alias ``sandbox``, falling back to ``sandbox-claude``), ``sandbox-claude``,
``sandbox-gemini``, and ``sandbox-embed`` for ``/v1/embeddings``. A fresh machine with no
API keys therefore answers at once, through the same engines, limits and breakers as a real
provider. Each provider whose key is set in the environment adds a real deployment next to
them.

The admin API needs a key here as anywhere: the sandbox takes the one in
``RAKKA_ADMIN_KEY`` (the variable ``rakka status`` reads), which ``rakka serve`` generates
and prints at start when it is not set. It is never open without a key, not even on
loopback: any local process, and any web page a browser on this machine opens, can reach
loopback, and the admin API applies configurations (which name files to read).

The same mocks serve a configuration that asks for them (``[cluster].mock_providers``,
:func:`with_mock_providers`): there they accept any key and echo the last message.

The sandbox is reachable by anyone the gateway serves, so its OpenAI mock refuses an
embeddings request whose vectors would hold more than
:data:`~rakka_inference.testkit.mock_runner.MAX_EMBEDDING_VALUES` numbers (inputs x
``dimensions``) with OpenAI's 400, before building any: each factor is bounded at the
gateway, their product is not. The chat replies are fixed text, whatever ``max_tokens``
asks (``n`` gets that many choices of it, told apart by their number, and ``logprobs`` made-up
log probabilities: :mod:`~rakka_inference.testkit.mock_choices`; the Claude mock's deployment
refuses both) — except that the mocks reply like a model
(:mod:`~rakka_inference.testkit.model_like`): they call the tools they are offered with
arguments valid against each tool's schema, and answer in the JSON shape asked for.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from rakka_inference.apps.cli_admin import ADMIN_KEY_ENV
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.runtimes import AnthropicConfig, GeminiConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.http_script import RecordedRequest, ScriptedResponse
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.mock_openai import EMBEDDING_DIMENSIONS, OpenAIMock
from rakka_inference.testkit.mock_runner import MAX_EMBEDDING_VALUES
from rakka_inference.testkit.openai_render import error_response

__all__ = ["SANDBOX_KEY", "Sandbox", "SandboxOpenAI", "sandbox_config", "with_mock_providers"]

SANDBOX_KEY = "sandbox-key"
"""The key the in-process mock providers accept. Not a secret: they are test doubles."""


class SandboxOpenAI(OpenAIMock):
    """The OpenAI mock, refusing embeddings too large to build (see the module)."""

    def respond(self, request: RecordedRequest) -> ScriptedResponse:
        if request.method == "POST" and request.path.endswith("/embeddings"):
            values = _embedding_values(request.body)
            if values > MAX_EMBEDDING_VALUES:
                message = (
                    f"This request asks for {values} embedding values; the sandbox builds at "
                    f"most {MAX_EMBEDDING_VALUES}. Send fewer inputs or fewer dimensions."
                )
                return error_response(0, 400, message, param="dimensions", code="invalid_value")
        return super().respond(request)


RECORDS = 256
"""The recent requests each mock keeps (for a look in a debugger): the sandbox serves for
as long as the gateway runs, so its mocks must not keep every request."""


def _embedding_values(body: bytes) -> int:
    """Inputs x dimensions of an embeddings body; 0 when it is not one (the mock says why)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(document, dict):
        return 0
    dimensions = document.get("dimensions", EMBEDDING_DIMENSIONS)
    inputs = document.get("input")
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        return 0
    if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int):
        return len(inputs) * dimensions  # several inputs (strings or token lists)
    return dimensions


@dataclass
class Sandbox:
    """The in-process mock providers behind the embedded default."""

    openai: OpenAIMock = field(
        default_factory=lambda: SandboxOpenAI(
            faults=FaultPlan(valid_keys={SANDBOX_KEY}),
            reply=_reply("sandbox-gpt"),
            model_like=True,
            records=RECORDS,
        )
    )
    anthropic: AnthropicMock = field(
        default_factory=lambda: AnthropicMock(
            faults=FaultPlan(valid_keys={SANDBOX_KEY}),
            reply=_reply("sandbox-claude"),
            model_like=True,
            records=RECORDS,
        )
    )
    gemini: GeminiMock = field(
        default_factory=lambda: GeminiMock(
            faults=FaultPlan(valid_keys={SANDBOX_KEY}),
            reply=_reply("sandbox-gemini"),
            model_like=True,
            records=RECORDS,
        )
    )

    @classmethod
    def for_config(cls) -> Sandbox:
        """The mocks behind ``[cluster].mock_providers``: any key accepted, and an echo of
        the last user message for an answer, streamed in a few pieces."""
        reply = ReplyScript(chunks=8, chunk_delay_s=0.02)
        return cls(
            openai=SandboxOpenAI(reply=reply, records=RECORDS),
            anthropic=AnthropicMock(reply=reply, records=RECORDS),
            gemini=GeminiMock(reply=reply, records=RECORDS),
        )

    async def start(self) -> None:
        for mock in (self.openai, self.anthropic, self.gemini):
            await mock.start()

    async def stop(self) -> None:
        for mock in (self.openai, self.anthropic, self.gemini):
            await mock.stop()


def _reply(name: str) -> ReplyScript:
    return ReplyScript(
        text=f"Hello from {name}, a mock provider running inside rakka. "
        "Set a provider key (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY) to add a "
        "real deployment next to it.",
        chunks=12,
        chunk_delay_s=0.02,
    )


# Real deployments added when the provider's key is in the environment.
_REAL: tuple[tuple[str, str, RuntimeKind, str], ...] = (
    ("OPENAI_API_KEY", "gpt-4o-mini", RuntimeKind.OPENAI, "gpt-4o-mini"),
    ("OPENAI_API_KEY", "text-embedding-3-small", RuntimeKind.OPENAI, "text-embedding-3-small"),
    ("ANTHROPIC_API_KEY", "claude-haiku-4-5", RuntimeKind.ANTHROPIC, "claude-haiku-4-5"),
    ("GEMINI_API_KEY", "gemini-2.5-flash", RuntimeKind.GEMINI, "gemini-2.5-flash"),
)


def sandbox_config(
    sandbox: Sandbox, *, bind: str, environ: Mapping[str, str] | None = None
) -> Config:
    """The embedded default: sandbox deployments on the running mocks, plus real ones; its
    admin key is ``RAKKA_ADMIN_KEY``'s when that is set (else the admin API is closed)."""
    env = os.environ if environ is None else environ
    key = SecretRef.inline(SANDBOX_KEY, warn=False)
    deployments = [
        Deployment(
            name="sandbox-gpt",
            model="gpt-4o-mini",
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(endpoint=sandbox.openai.openai_base_url, api_key=key),
            aliases=("sandbox",),
            fallbacks=("sandbox-claude",),
        ),
        Deployment(
            name="sandbox-embed",
            model="text-embedding-3-small",
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(endpoint=sandbox.openai.openai_base_url, api_key=key),
        ),
        Deployment(
            name="sandbox-claude",
            model="claude-haiku-4-5",
            runtime=RuntimeKind.ANTHROPIC,
            runtime_config=AnthropicConfig(endpoint=sandbox.anthropic.url, api_key=key),
        ),
        Deployment(
            name="sandbox-gemini",
            model="gemini-2.5-flash",
            runtime=RuntimeKind.GEMINI,
            runtime_config=GeminiConfig(endpoint=sandbox.gemini.url, api_key=key),
        ),
    ]
    configs = {
        RuntimeKind.OPENAI: OpenAIConfig,
        RuntimeKind.ANTHROPIC: AnthropicConfig,
        RuntimeKind.GEMINI: GeminiConfig,
    }
    for variable, name, runtime, model in _REAL:
        if env.get(variable):
            runtime_config = configs[runtime](api_key=SecretRef.from_env(variable))
            deployments.append(
                Deployment(name=name, model=model, runtime=runtime, runtime_config=runtime_config)
            )
    admin_key = SecretRef.from_env(ADMIN_KEY_ENV) if env.get(ADMIN_KEY_ENV) else None
    cluster = ClusterConfig(name="sandbox", bind=bind, admin_api_key=admin_key)
    return Config(cluster=cluster, deployments=tuple(deployments))


def with_mock_providers(config: Config, sandbox: Sandbox) -> Config:
    """``config`` with every deployment that sets no ``endpoint`` and speaks a mocked
    format (OpenAI's, Anthropic's, Gemini AI Studio's: each runtime's default variant) sent
    to the running mock of that format. Other deployments are left as they are."""
    urls = {
        RuntimeKind.OPENAI: sandbox.openai.openai_base_url,
        RuntimeKind.ANTHROPIC: sandbox.anthropic.url,
        RuntimeKind.GEMINI: sandbox.gemini.url,
    }
    deployments = tuple(_on_mock(deployment, urls) for deployment in config.deployments)
    return dataclasses.replace(config, deployments=deployments)


def _on_mock(deployment: Deployment, urls: Mapping[RuntimeKind, str]) -> Deployment:
    settings = deployment.runtime_config
    url = urls.get(deployment.runtime)
    if (
        url is None
        or not isinstance(settings, OpenAIConfig | AnthropicConfig | GeminiConfig)
        or settings.endpoint is not None
        or settings.named_variant is not None
    ):
        return deployment
    settings = dataclasses.replace(settings, endpoint=url)
    return dataclasses.replace(deployment, runtime_config=settings)
