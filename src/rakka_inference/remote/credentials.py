"""Credential providers: where a remote session gets the secret it sends upstream.

A :class:`CredentialProvider` has two speeds:

- ``credential()`` is on the hot path (every provider request). It returns a cached
  :class:`~rakka_inference.core.secrets.Secret` and does no I/O, except when there is
  nothing usable cached (first use, or an OAuth token close to expiry);
- ``refresh()`` re-reads the source now: a file, a variable, a program's output, or a
  provider's token exchange. The :class:`~rakka_inference.remote.session.RemoteSession`
  calls it on every rebuild, which is how a rotated key takes effect. A failed refresh
  raises and keeps the previous value, so the old session goes on serving.

The providers:

=============================  ==========================================================
:class:`StaticCredential`      a fixed secret (tests, an inline key)
:class:`SecretRefCredential`   ``{ from_env = ... }`` / ``{ from_file = ... }``, re-read on refresh
:class:`CommandCredential`     a program's stdout (``gcloud auth print-access-token``, a
                               vault client), re-run on refresh and optionally by age
a provider's token credential  what the provider registry answers for a deployment that
                               exchanges its secret for a token (Vertex AI's service
                               account, :mod:`rakka_inference.providers.gemini_vertex`),
                               fetched over a transport of its own (:class:`OwningCredential`)
=============================  ==========================================================

:func:`deployment_credential` chooses among them for a remote deployment: it asks the
registry for a token credential, else takes the secret reference the runtime config names
as its credential.

Secrets never reach a log line, an exception message or a repr. Errors name the source
(:meth:`CredentialProvider.describe`) or a program's name and exit status, never what was
read.

Concurrent callers that find nothing usable share one fetch
(:class:`~rakka_inference.actors.single_flight.SingleFlight`): a burst of requests at
expiry makes one fetch, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from rakka_inference.actors.single_flight import SingleFlight
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, ConfigIssue, SecretError
from rakka_inference.core.runtimes import RemoteRuntimeConfig
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.providers.base import TokenCredential
from rakka_inference.providers.registry import token_credential_for
from rakka_inference.wire.http import HttpTransport

__all__ = [
    "CommandCredential",
    "CredentialProvider",
    "OwningCredential",
    "SecretRefCredential",
    "SingleFlight",
    "StaticCredential",
    "credential_provider_for",
    "deployment_credential",
]

log = logging.getLogger("rakka_inference.remote.credentials")


@runtime_checkable
class CredentialProvider(Protocol):
    """Where a session's credential comes from. See the module docstring."""

    async def credential(self) -> Secret:
        """The current credential; cached, cheap on the hot path."""
        ...

    async def refresh(self) -> None:
        """Re-read or re-fetch the credential now. Raises SecretError; keeps the old one."""
        ...

    def describe(self) -> str:
        """Where the credential comes from, for logs and errors. Never the value."""
        ...


# --------------------------------------------------------------------------- simple


class StaticCredential:
    """A fixed secret. ``refresh`` has nothing to re-read."""

    __slots__ = ("_secret",)

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    async def credential(self) -> Secret:
        return self._secret

    async def refresh(self) -> None:
        return None

    def describe(self) -> str:
        return "static"

    def __repr__(self) -> str:
        return "StaticCredential()"


class SecretRefCredential:
    """A secret from an environment variable or a file, re-read on each ``refresh``.

    Between refreshes the value is cached, so the hot path does no file I/O. The first
    ``credential()`` before any refresh reads the source once.
    """

    __slots__ = ("_cached", "_environ", "ref")

    def __init__(self, ref: SecretRef, *, environ: dict[str, str] | None = None) -> None:
        self.ref = ref
        self._environ = environ
        self._cached: Secret | None = None

    async def credential(self) -> Secret:
        cached = self._cached
        if cached is None:
            cached = self._cached = self.ref.resolve(self._environ)
        return cached

    async def refresh(self) -> None:
        self._cached = self.ref.resolve(self._environ)

    def describe(self) -> str:
        return self.ref.describe()

    def __repr__(self) -> str:
        return f"SecretRefCredential({self.ref.describe()})"


def credential_provider_for(ref: SecretRef) -> CredentialProvider:
    """The provider for a plain API key reference: inline → static, env/file → re-read."""
    if ref.source == "inline":
        return StaticCredential(ref.resolve())
    return SecretRefCredential(ref)


# --------------------------------------------------------------------------- per deployment


class OwningCredential:
    """A provider's token credential that also owns (and closes) the transport it fetches
    with."""

    __slots__ = ("_inner", "_transport")

    def __init__(self, inner: TokenCredential, transport: HttpTransport) -> None:
        self._inner = inner
        self._transport = transport

    async def credential(self) -> Secret:
        return await self._inner.credential()

    async def refresh(self) -> None:
        await self._inner.refresh()

    def describe(self) -> str:
        return self._inner.describe()

    async def aclose(self) -> None:
        await self._inner.aclose()
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"OwningCredential({self._inner.describe()})"


def deployment_credential(
    deployment: Deployment,
    config: RemoteRuntimeConfig,
    open_transport: Callable[[], HttpTransport],
) -> CredentialProvider:
    """The credential provider of a remote deployment.

    A provider that exchanges the configured secret for a token (the registry's
    :func:`~rakka_inference.providers.registry.token_credential_for`) gets a transport of
    its own from ``open_transport``, closed with the session; otherwise the secret
    reference the runtime config names as its credential is used as it is.
    """
    token_credential = token_credential_for(deployment)
    if token_credential is not None:
        transport = open_transport()
        return OwningCredential(token_credential(transport), transport)
    ref = config.credential
    if ref is None:
        raise ConfigError(
            [
                ConfigIssue(
                    "<deployment>",
                    f"deployment {deployment.name!r}.runtime_config.{config.credential_field}",
                    "a remote deployment needs a credential",
                )
            ]
        )
    return credential_provider_for(ref)


# --------------------------------------------------------------------------- command


class CommandCredential:
    """A secret printed by a program, such as ``gcloud auth print-access-token``.

    The program (``argv``, run without a shell) is run on ``refresh`` and on first use; its
    stdout, stripped, is the secret. With ``max_age_s`` it is also re-run when the value
    is older than that (on the injected monotonic ``clock``). Its stderr is discarded: it
    could echo the token. A non-zero exit, empty output or a run longer than ``timeout_s``
    raises :class:`SecretError` naming ``argv[0]`` and the exit status; a program that
    overruns is killed with its process group and reaped.
    """

    __slots__ = ("_cached", "_clock", "_fetched_at", "_flight", "argv", "max_age_s", "timeout_s")

    def __init__(
        self,
        argv: Sequence[str],
        timeout_s: float,
        *,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not argv or not argv[0]:
            raise ValueError("a credential command needs a program to run")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError("max_age_s must be > 0")
        self.argv: tuple[str, ...] = tuple(argv)
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._cached: Secret | None = None
        self._fetched_at = -math.inf
        self._flight: SingleFlight[Secret] = SingleFlight(f"credential-command:{argv[0]}")

    async def credential(self) -> Secret:
        cached = self._cached
        if cached is not None and (
            self.max_age_s is None or self._clock() - self._fetched_at < self.max_age_s
        ):
            return cached
        return await self._flight.run(self._run)

    async def refresh(self) -> None:
        await self._flight.run(self._run)

    def describe(self) -> str:
        return f"command:{self.argv[0]}"

    async def aclose(self) -> None:
        """Stop a run in flight (its program is killed)."""
        await self._flight.aclose()

    async def _run(self) -> Secret:
        name = self.argv[0]
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=os.name == "posix",
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SecretError(f"credential command {name!r} cannot be started: {reason}") from None
        stdout = b""
        timed_out = False
        try:
            async with asyncio.timeout(self.timeout_s):
                stdout, _ = await process.communicate()
        except TimeoutError:
            timed_out = True
        finally:
            if process.returncode is None:
                _kill(process)
                await process.wait()
        if timed_out:
            raise SecretError(
                f"credential command {name!r} did not finish within {self.timeout_s:g} s; killed"
            )
        status = process.returncode
        if status != 0:
            raise SecretError(f"credential command {name!r} failed with exit status {status}")
        try:
            value = stdout.decode("utf-8").strip()
        except UnicodeDecodeError:
            value = None
        if value is None:
            raise SecretError(f"credential command {name!r} printed something that is not UTF-8")
        if not value:
            raise SecretError(f"credential command {name!r} printed nothing (exit status 0)")
        secret = Secret(value)
        self._cached = secret
        self._fetched_at = self._clock()
        log.debug("credential command %r ran; credential refreshed", name)
        return secret

    def __repr__(self) -> str:
        return f"CommandCredential({self.describe()})"


def _kill(process: asyncio.subprocess.Process) -> None:
    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - no process groups
            process.kill()
    except ProcessLookupError:  # pragma: no cover - it exited between the check and the kill
        pass
