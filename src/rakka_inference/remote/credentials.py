"""Credential providers: where a remote session gets the secret it sends upstream.

A :class:`CredentialProvider` has two speeds:

- ``credential()`` is on the hot path (every provider request). It returns a cached
  :class:`~rakka_inference.core.secrets.Secret` and does no I/O, except when there is
  nothing usable cached (first use, or an OAuth token close to expiry);
- ``refresh()`` re-reads the source now: a file, a variable, a program's output, or a
  service-account key and a fresh token. The :class:`~rakka_inference.remote.session.RemoteSession`
  calls it on every rebuild, which is how a rotated key takes effect. A failed refresh
  raises and keeps the previous value, so the old session goes on serving.

The providers:

=============================  ==========================================================
:class:`StaticCredential`      a fixed secret (tests, an inline key)
:class:`SecretRefCredential`   ``{ from_env = ... }`` / ``{ from_file = ... }``, re-read on refresh
:class:`CommandCredential`     a program's stdout (``gcloud auth print-access-token``, a
                               vault client), re-run on refresh and optionally by age
:class:`ServiceAccountCredential`  Google OAuth2 for Vertex AI: a signed JWT exchanged for
                               an access token, renewed before it expires
=============================  ==========================================================

Secrets never reach a log line, an exception message or a repr. Errors name the source
(:meth:`CredentialProvider.describe`), a program's name and exit status, or a token
endpoint's HTTP status and OAuth ``error`` code, never what was read. Exceptions that could
carry what was read (a JSON decode error keeps the whole document) are never chained: the
:class:`SecretError` is raised outside the ``except`` block that caught them.

Concurrent callers that find nothing usable share one fetch (:class:`SingleFlight`): a
burst of requests at token expiry makes one token request, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlencode, urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from rakka_inference.core.deployment import Timeouts
from rakka_inference.core.errors import RakkaError, SecretError
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.wire.http import HttpRequest, HttpTransport

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "DEFAULT_TOKEN_URI",
    "JWT_BEARER_GRANT",
    "TOKEN_TIMEOUTS",
    "CommandCredential",
    "CredentialProvider",
    "SecretRefCredential",
    "ServiceAccountCredential",
    "SingleFlight",
    "StaticCredential",
    "credential_provider_for",
]

log = logging.getLogger("rakka_inference.remote.credentials")

T = TypeVar("T")

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_TIMEOUTS = Timeouts(
    connect_timeout_ms=5_000,
    request_timeout_ms=10_000,
    read_timeout_ms=10_000,
    total_timeout_ms=30_000,
)
"""Limits of one token request: it is small, and a request waits for it."""

_ASSERTION_LIFETIME_S = 3600
_RENEW_RETRY_S = 15.0
"""After a failed early renewal, keep the still-valid token this long before trying again."""
_OAUTH_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


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


class SingleFlight(Generic[T]):
    """At most one call in flight; concurrent callers share its outcome.

    The call runs in its own task, so a caller that is cancelled (its client went away)
    neither cancels the work the others wait for nor leaves its outcome unretrieved.
    """

    __slots__ = ("_name", "_task")

    def __init__(self, name: str) -> None:
        self._name = name
        self._task: asyncio.Task[T] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def run(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Start ``work()`` unless a call is already in flight, and await that call."""
        task = self._task
        if task is None:
            task = asyncio.get_running_loop().create_task(work(), name=self._name)
            self._task = task
            task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[T]) -> None:
        self._task = None  # only one task at a time: this one
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    async def aclose(self) -> None:
        """Cancel the call in flight, if any, and wait until it has ended."""
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


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


# --------------------------------------------------------------------------- service account


@dataclass(frozen=True, slots=True)
class _ServiceAccountKey:
    client_email: str
    private_key: RSAPrivateKey = field(repr=False)
    key_id: str | None
    token_uri: str


@dataclass(frozen=True, slots=True)
class _Token:
    secret: Secret
    expires_at: float
    renew_at: float


class ServiceAccountCredential:
    """An OAuth2 access token for a Google service account (Vertex AI).

    ``credentials`` points at the service-account JSON key. The flow (RFC 7523): sign a
    JWT (RS256; ``iss`` the account's email, ``scope``, ``aud`` the token URI, ``iat`` now,
    ``exp`` an hour later, header ``kid`` the key id) and POST it as a form to the key's
    ``token_uri`` through ``transport``; the answer's ``access_token`` is the credential,
    valid for ``expires_in`` seconds on the wall ``clock`` (unix seconds).

    The token is renewed ``refresh_margin_s`` before it expires (at most half its lifetime
    early). Concurrent callers share one token request. If an early renewal fails while the
    token is still valid, the token goes on being used (and the failure logged) and the
    renewal is retried 15 s later; once it has expired, failures raise.

    The key file is read on first use and on ``refresh()`` (a session rebuild); routine
    renewals reuse the key already loaded. Errors: a token endpoint answering non-2xx →
    :class:`SecretError` with the status and the OAuth ``error`` code; a malformed key file
    → :class:`SecretError` naming its source; the transport's typed errors (``Timeout``,
    ``NetworkError``) propagate as they are. ``transport`` is the caller's: it is not closed
    here.
    """

    def __init__(
        self,
        credentials: SecretRef,
        transport: HttpTransport,
        *,
        clock: Callable[[], float] = time.time,
        scopes: Sequence[str] = (CLOUD_PLATFORM_SCOPE,),
        refresh_margin_s: float = 300.0,
        timeouts: Timeouts = TOKEN_TIMEOUTS,
    ) -> None:
        if not scopes:
            raise ValueError("at least one OAuth scope is required")
        if refresh_margin_s < 0:
            raise ValueError("refresh_margin_s must be >= 0")
        self.credentials = credentials
        self.scopes: tuple[str, ...] = tuple(scopes)
        self.refresh_margin_s = refresh_margin_s
        self._transport = transport
        self._clock = clock
        self._timeouts = timeouts
        self._key: _ServiceAccountKey | None = None
        self._token: _Token | None = None
        self._retry_at = -math.inf
        # Key-file reloads asked for (by refresh) vs settled (done, or the refresh failed):
        # a refresh that joins a fetch which had already read the file runs one more, so
        # every refresh sees the file as it is now. Routine renewals reuse the loaded key.
        self._reloads_wanted = 0
        self._reloads_settled = 0
        self._flight: SingleFlight[Secret] = SingleFlight("service-account-token")

    def describe(self) -> str:
        return f"service-account {self.credentials.describe()}"

    async def credential(self) -> Secret:
        token = self._token
        if token is not None and self._clock() < token.renew_at:
            return token.secret
        return await self._renew(token)

    async def refresh(self) -> None:
        self._reloads_wanted += 1
        wanted = self._reloads_wanted
        try:
            while self._reloads_settled < wanted:
                await self._flight.run(self._fetch)
        except BaseException:
            # Failed: the next refresh (session rebuild) reads the file again; until then,
            # routine renewals go on with the key already loaded.
            self._reloads_settled = max(self._reloads_settled, wanted)
            raise

    async def aclose(self) -> None:
        """Cancel a token request in flight. The transport is left open (it is the caller's)."""
        await self._flight.aclose()

    async def _renew(self, token: _Token | None) -> Secret:
        now = self._clock()
        if token is None or now >= token.expires_at:
            return await self._flight.run(self._fetch)
        if now < self._retry_at:
            return token.secret
        try:
            return await self._flight.run(self._fetch)
        except RakkaError as error:
            self._retry_at = now + _RENEW_RETRY_S
            log.warning(
                "%s: renewing the access token failed (%s); the current one is valid for %.0f s",
                self.describe(),
                error,
                token.expires_at - now,
            )
            return token.secret

    async def _fetch(self) -> Secret:
        wanted = self._reloads_wanted
        key = self._key
        if key is None or self._reloads_settled < wanted:
            key = self._load_key()
        now = self._clock()
        issued = int(now)
        claims = {
            "iss": key.client_email,
            "scope": " ".join(self.scopes),
            "aud": key.token_uri,
            "iat": issued,
            "exp": issued + _ASSERTION_LIFETIME_S,
        }
        headers = {"kid": key.key_id} if key.key_id else None
        assertion = jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)
        body = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": assertion}).encode()
        request = HttpRequest(
            "POST",
            key.token_uri,
            {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
            body,
        )
        response = await self._transport.send(request, self._timeouts, stream=False)
        try:
            payload = await response.read()
        finally:
            await response.aclose()
        if not 200 <= response.status < 300:
            code = _oauth_error_code(payload)
            raise SecretError(
                f"{self.describe()}: token endpoint {key.token_uri} answered {response.status}"
                + (f" ({code})" if code else "")
            )
        secret, lifetime = self._parse_token(payload, key.token_uri)
        margin = min(self.refresh_margin_s, lifetime / 2)
        self._token = _Token(secret, expires_at=now + lifetime, renew_at=now + lifetime - margin)
        self._key = key
        self._reloads_settled = max(self._reloads_settled, wanted)
        self._retry_at = -math.inf
        log.info("%s: access token obtained, valid for %.0f s", self.describe(), lifetime)
        return secret

    def _load_key(self) -> _ServiceAccountKey:
        source = self.describe()
        document = _json_object(self.credentials.resolve().expose().encode("utf-8"))
        if document is None:
            raise SecretError(f"{source} is not a JSON object")
        if document.get("type") != "service_account":
            raise SecretError(f'{source} is not a service-account key ("type" is not so)')
        email = document.get("client_email")
        pem = document.get("private_key")
        key_id = document.get("private_key_id")
        token_uri = document.get("token_uri", DEFAULT_TOKEN_URI)
        if not isinstance(email, str) or not email:
            raise SecretError(f"{source} has no client_email")
        if not isinstance(pem, str) or not pem:
            raise SecretError(f"{source} has no private_key")
        if key_id is not None and not isinstance(key_id, str):
            raise SecretError(f"{source}: private_key_id is not a string")
        if not isinstance(token_uri, str) or urlsplit(token_uri).scheme not in {"https", "http"}:
            raise SecretError(f"{source}: token_uri is not an http(s) URL")
        private_key = _rsa_key(pem)
        if private_key is None:
            raise SecretError(f"{source}: private_key is not an unencrypted PEM RSA key")
        return _ServiceAccountKey(email, private_key, key_id or None, token_uri)

    def _parse_token(self, payload: bytes, token_uri: str) -> tuple[Secret, float]:
        document = _json_object(payload)
        token = None if document is None else document.get("access_token")
        lifetime = None if document is None else document.get("expires_in")
        if not isinstance(token, str) or not token:
            raise SecretError(f"{self.describe()}: {token_uri} answered without an access_token")
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            raise SecretError(f"{self.describe()}: {token_uri} answered without a valid expires_in")
        return Secret(token), float(lifetime)

    def __repr__(self) -> str:
        return f"ServiceAccountCredential({self.credentials.describe()})"


def _json_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``, or None. The decode error (which keeps the document)
    is dropped here, so it can never be chained to an error that gets logged."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _rsa_key(pem: str) -> RSAPrivateKey | None:
    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except Exception:  # ValueError, TypeError, UnsupportedAlgorithm: never chained
        return None
    return key if isinstance(key, RSAPrivateKey) else None


def _oauth_error_code(payload: bytes) -> str | None:
    """The OAuth ``error`` code of an error answer, if it looks like one. Nothing else of the
    body (``error_description`` may quote the assertion) is ever used."""
    document = _json_object(payload)
    code = None if document is None else document.get("error")
    if isinstance(code, str) and _OAUTH_ERROR_CODE.fullmatch(code):
        return code
    return None
