"""Vertex AI's credential: a Google service account's OAuth2 access token.

``GeminiConfig(variant = "vertex")`` authenticates with ``credentials``, a reference to the
service-account JSON key. :class:`ServiceAccountCredential` turns it into a bearer token
(RFC 7523: a signed JWT exchanged at the key's ``token_uri``) and renews it before it
expires; the Gemini adapter sends it as ``Authorization: Bearer``. The registry hands it to
the remote session (:func:`~rakka_inference.providers.registry.token_credential_for`), which
treats it like any other credential provider.

Secrets never reach a log line, an exception message or a repr: errors name the key's
source, a token endpoint's HTTP status and OAuth ``error`` code, never what was read.
Exceptions that could carry what was read (a JSON decode error keeps the whole document)
are never chained.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from rakka_inference.actors.single_flight import SingleFlight
from rakka_inference.core.errors import RakkaError, SecretError
from rakka_inference.core.policies import Timeouts
from rakka_inference.core.runtimes import GeminiConfig
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.wire.http import HttpRequest, HttpTransport

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "DEFAULT_TOKEN_URI",
    "JWT_BEARER_GRANT",
    "TOKEN_TIMEOUTS",
    "ServiceAccountCredential",
    "vertex_token_credential",
]

log = logging.getLogger("rakka_inference.providers.gemini_vertex")

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


def vertex_token_credential(
    config: GeminiConfig,
) -> Callable[[HttpTransport], ServiceAccountCredential] | None:
    """How a Vertex deployment gets its token: a service-account credential fetching
    through the transport it is given. ``None`` for AI Studio, whose API key is sent as
    it is."""
    credentials = config.credentials
    if config.variant != "vertex" or credentials is None:
        return None
    return lambda transport: ServiceAccountCredential(credentials, transport)


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
