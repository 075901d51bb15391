"""Vertex AI's service-account credential: a signed JWT exchanged for an OAuth2 token,
renewed before it expires, never leaking what it read."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import NetworkError, SecretError
from rakka_inference.core.policies import Timeouts
from rakka_inference.core.runtimes import GeminiConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.providers.gemini_vertex import (
    CLOUD_PLATFORM_SCOPE,
    DEFAULT_TOKEN_URI,
    JWT_BEARER_GRANT,
    TOKEN_TIMEOUTS,
    ServiceAccountCredential,
)
from rakka_inference.providers.registry import token_credential_for
from rakka_inference.remote.credentials import CredentialProvider
from rakka_inference.testkit.clock import FakeClock
from rakka_inference.wire.http import HttpRequest, HttpResponse

TOKEN_URI = "https://oauth2.example.test/token"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def write_key(path: Path, key: rsa.RSAPrivateKey, **fields: Any) -> Path:
    document: dict[str, Any] = {
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": "kid-123",
        "private_key": pem_of(key),
        "client_email": "svc@proj.iam.gserviceaccount.com",
        "token_uri": TOKEN_URI,
    }
    document.update(fields)
    path.write_text(json.dumps({k: v for k, v in document.items() if v is not None}))
    return path


class FakeResponse:
    """An HttpResponse whose body is all there."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.headers: dict[str, str] = {"content-type": "application/json"}
        self.body = body
        self.closed = False

    async def read(self) -> bytes:
        return self.body

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        yield self.body

    async def aclose(self) -> None:
        self.closed = True


Reply = tuple[int, bytes] | Exception


def token_reply(token: str = "ya29.token-1", expires_in: Any = 3600) -> Reply:
    return 200, json.dumps({"access_token": token, "expires_in": expires_in}).encode()


class FakeTokenEndpoint:
    """An HttpTransport that records token requests and answers from a script."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[HttpRequest] = []
        self.timeouts: list[Timeouts] = []
        self.responses: list[FakeResponse] = []
        self.gate: asyncio.Event | None = None

    async def send(self, request: HttpRequest, timeouts: Timeouts, *, stream: bool) -> HttpResponse:
        assert not stream
        self.requests.append(request)
        self.timeouts.append(timeouts)
        if self.gate is not None:
            await self.gate.wait()
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        response = FakeResponse(*reply)
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        raise AssertionError("the credential must not close the caller's transport")

    def form(self, index: int = -1) -> dict[str, list[str]]:
        return parse_qs(self.requests[index].body.decode(), strict_parsing=True)

    def assertion(self, index: int = -1) -> str:
        return self.form(index)["assertion"][0]


def service_account(
    path: Path, endpoint: FakeTokenEndpoint, clock: Callable[[], float], **kwargs: Any
) -> ServiceAccountCredential:
    return ServiceAccountCredential(SecretRef.from_file(path), endpoint, clock=clock, **kwargs)


async def test_token_request_is_a_signed_jwt_bearer_grant(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply("ya29.first"))
    clock = FakeClock(time.time())
    provider = service_account(path, endpoint, clock)
    assert isinstance(provider, CredentialProvider)

    assert (await provider.credential()).expose() == "ya29.first"

    (request,) = endpoint.requests
    assert request.method == "POST"
    assert request.url == TOKEN_URI
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert endpoint.timeouts == [TOKEN_TIMEOUTS]
    form = endpoint.form()
    assert set(form) == {"grant_type", "assertion"}
    assert form["grant_type"] == [JWT_BEARER_GRANT]
    assertion = endpoint.assertion()
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "RS256"
    assert header["kid"] == "kid-123"
    claims = jwt.decode(
        assertion,
        rsa_key.public_key(),
        algorithms=["RS256"],
        audience=TOKEN_URI,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "svc@proj.iam.gserviceaccount.com",
        "scope": CLOUD_PLATFORM_SCOPE,
        "aud": TOKEN_URI,
        "iat": int(clock.now),
        "exp": int(clock.now) + 3600,
    }
    assert endpoint.responses[0].closed
    assert provider.describe() == f"service-account file:{path}"
    assert repr(provider) == f"ServiceAccountCredential(file:{path})"


async def test_another_key_signs_nothing_that_verifies(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply())
    await service_account(path, endpoint, FakeClock(time.time())).credential()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            endpoint.assertion(), other.public_key(), algorithms=["RS256"], audience=TOKEN_URI
        )


async def test_scopes_default_token_uri_and_no_kid(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key, token_uri=None, private_key_id=None)
    endpoint = FakeTokenEndpoint(token_reply())
    scopes = ("https://www.googleapis.com/auth/a", "https://www.googleapis.com/auth/b")
    provider = service_account(path, endpoint, FakeClock(time.time()), scopes=scopes)
    await provider.credential()
    assert endpoint.requests[0].url == DEFAULT_TOKEN_URI
    assertion = endpoint.assertion()
    assert "kid" not in jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, options={"verify_signature": False})
    assert claims["scope"] == " ".join(scopes)
    assert claims["aud"] == DEFAULT_TOKEN_URI


async def test_token_is_cached_and_renewed_within_the_margin(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply("ya29.one"), token_reply("ya29.two"))
    clock = FakeClock(1_700_000_000)
    provider = service_account(path, endpoint, clock, refresh_margin_s=300)
    assert (await provider.credential()).expose() == "ya29.one"
    clock.advance(3600 - 300 - 1)
    assert (await provider.credential()).expose() == "ya29.one"
    assert len(endpoint.requests) == 1
    clock.advance(1)  # 300 s before expiry: renew
    assert (await provider.credential()).expose() == "ya29.two"
    assert len(endpoint.requests) == 2
    claims = jwt.decode(endpoint.assertion(), options={"verify_signature": False})
    assert claims["iat"] == 1_700_000_000 + 3300


async def test_a_short_lived_token_is_renewed_at_half_its_life(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply("ya29.short", expires_in="100"))
    clock = FakeClock()
    provider = service_account(path, endpoint, clock)
    await provider.credential()
    clock.advance(49)
    await provider.credential()
    assert len(endpoint.requests) == 1
    clock.advance(1)
    await provider.credential()
    assert len(endpoint.requests) == 2


async def test_concurrent_callers_share_one_token_request(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply("ya29.shared"))
    endpoint.gate = asyncio.Event()
    provider = service_account(path, endpoint, FakeClock())
    callers = [asyncio.create_task(provider.credential()) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(endpoint.requests) == 1
    endpoint.gate.set()
    secrets = await asyncio.gather(*callers)
    assert {secret.expose() for secret in secrets} == {"ya29.shared"}
    assert len(endpoint.requests) == 1


async def test_refresh_rereads_the_key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply("ya29.a"), token_reply("ya29.b"), token_reply("c"))
    provider = service_account(path, endpoint, FakeClock())
    await provider.refresh()
    write_key(path, rsa_key, client_email="rotated@proj.iam.gserviceaccount.com")
    await provider.credential()  # cached: the routine path does not re-read the file
    assert len(endpoint.requests) == 1
    await provider.refresh()
    assert (await provider.credential()).expose() == "ya29.b"
    claims = jwt.decode(endpoint.assertion(), options={"verify_signature": False})
    assert claims["iss"] == "rotated@proj.iam.gserviceaccount.com"


async def test_a_refresh_joining_a_fetch_that_read_the_old_key_fetches_again(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply("ya29.old"), token_reply("ya29.new"))
    endpoint.gate = asyncio.Event()
    provider = service_account(path, endpoint, FakeClock())
    first = asyncio.create_task(provider.credential())
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(endpoint.requests) == 1  # signed with the old file, waiting on the endpoint
    write_key(path, rsa_key, client_email="new@proj.iam.gserviceaccount.com")
    refresh = asyncio.create_task(provider.refresh())
    await asyncio.sleep(0)
    endpoint.gate.set()
    await asyncio.gather(first, refresh)
    assert len(endpoint.requests) == 2
    claims = jwt.decode(endpoint.assertion(), options={"verify_signature": False})
    assert claims["iss"] == "new@proj.iam.gserviceaccount.com"
    assert (await provider.credential()).expose() == "ya29.new"


async def test_a_failed_early_renewal_keeps_the_valid_token_then_retries(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    outage = (503, b'{"error": "backend_error"}')
    endpoint = FakeTokenEndpoint(token_reply("ya29.valid"), outage)
    clock = FakeClock()
    provider = service_account(path, endpoint, clock)
    await provider.credential()
    clock.advance(3400)  # within the margin, 200 s before expiry
    with caplog.at_level(logging.WARNING, logger="rakka_inference.remote.credentials"):
        assert (await provider.credential()).expose() == "ya29.valid"
    assert "503" in caplog.text
    assert "backend_error" in caplog.text
    assert len(endpoint.requests) == 2
    clock.advance(10)  # within the retry pause: no request
    assert (await provider.credential()).expose() == "ya29.valid"
    assert len(endpoint.requests) == 2
    clock.advance(5)
    assert (await provider.credential()).expose() == "ya29.valid"
    assert len(endpoint.requests) == 3
    clock.advance(200)  # expired: failures now raise
    with pytest.raises(SecretError, match="503"):
        await provider.credential()
    endpoint.replies = [token_reply("ya29.back")]
    assert (await provider.credential()).expose() == "ya29.back"


async def test_token_endpoint_error_names_status_and_oauth_code_only(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    body = json.dumps(
        {"error": "invalid_grant", "error_description": "Invalid JWT Signature: SENSITIVE"}
    ).encode()
    endpoint = FakeTokenEndpoint((400, body))
    provider = service_account(path, endpoint, FakeClock())
    with pytest.raises(SecretError) as caught:
        await provider.credential()
    message = str(caught.value)
    assert "400" in message
    assert "(invalid_grant)" in message
    assert TOKEN_URI in message
    assert "SENSITIVE" not in message
    assert endpoint.assertion() not in message


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        b'{"error": "not a code: has spaces and ya29.secret"}',
        b'{"error": {"code": 401}}',
        b"[1, 2]",
    ],
)
async def test_token_endpoint_error_without_a_usable_code(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, body: bytes
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    provider = service_account(path, FakeTokenEndpoint((401, body)), FakeClock())
    with pytest.raises(SecretError) as caught:
        await provider.credential()
    assert str(caught.value).endswith("answered 401")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "without an access_token"),
        (b'{"expires_in": 3600}', "without an access_token"),
        (b'{"access_token": "", "expires_in": 3600}', "without an access_token"),
        (b'{"access_token": "ya29.x"}', "expires_in"),
        (b'{"access_token": "ya29.x", "expires_in": 0}', "expires_in"),
        (b'{"access_token": "ya29.x", "expires_in": true}', "expires_in"),
        (b'{"access_token": "ya29.x", "expires_in": "soon"}', "expires_in"),
    ],
)
async def test_a_2xx_without_a_usable_token_fails(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, body: bytes, match: str
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    provider = service_account(path, FakeTokenEndpoint((200, body)), FakeClock())
    with pytest.raises(SecretError, match=match) as caught:
        await provider.credential()
    assert "ya29.x" not in str(caught.value)


async def test_transport_errors_propagate_typed(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    failure = NetworkError("connection refused", provider="google")
    provider = service_account(path, FakeTokenEndpoint(failure), FakeClock())
    with pytest.raises(NetworkError) as caught:
        await provider.refresh()
    assert caught.value is failure


def ec_pem() -> str:
    return pem_of(ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ("{not json", "is not a JSON object"),
        ("[]", "is not a JSON object"),
        ({"type": "authorized_user"}, "is not a service-account key"),
        ({"client_email": ""}, "has no client_email"),
        ({"private_key": None}, "has no private_key"),
        ({"private_key_id": 5}, "private_key_id is not a string"),
        ({"token_uri": "ftp://x/token"}, "token_uri is not an http"),
        ({"token_uri": 7}, "token_uri is not an http"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
         "not an unencrypted PEM RSA key"),
        ({"private_key": "ec"}, "not an unencrypted PEM RSA key"),
    ],
)  # fmt: skip
async def test_a_malformed_key_file_names_its_source_not_its_contents(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, document: str | dict[str, Any], match: str
) -> None:
    path = tmp_path / "sa.json"
    if isinstance(document, str):
        path.write_text(document)
    else:
        fields = dict(document)
        if fields.get("private_key") == "ec":
            fields["private_key"] = ec_pem()
        write_key(path, rsa_key, **fields)
        if "private_key" in fields and fields["private_key"] is None:
            data = json.loads(path.read_text())
            data.pop("private_key", None)
            path.write_text(json.dumps(data))
    endpoint = FakeTokenEndpoint(token_reply())
    provider = service_account(path, endpoint, FakeClock())
    with pytest.raises(SecretError, match=match) as caught:
        await provider.credential()
    error = caught.value
    assert f"file:{path}" in str(error)
    assert "PRIVATE KEY" not in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None  # nothing that held the document is chained
    assert endpoint.requests == []


async def test_a_missing_key_file(tmp_path: Path) -> None:
    provider = service_account(
        tmp_path / "absent.json", FakeTokenEndpoint(token_reply()), time.time
    )
    with pytest.raises(SecretError, match="cannot be read"):
        await provider.credential()


async def test_a_bad_key_file_on_refresh_keeps_the_loaded_key_and_token(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply("ya29.kept"), token_reply("ya29.next"))
    clock = FakeClock()
    provider = service_account(path, endpoint, clock)
    await provider.refresh()
    path.write_text('{"type": "service_acc')  # half-written during a rotation
    with pytest.raises(SecretError):
        await provider.refresh()
    assert (await provider.credential()).expose() == "ya29.kept"
    clock.advance(3400)  # routine renewal uses the key already loaded
    assert (await provider.credential()).expose() == "ya29.next"


async def test_aclose_cancels_a_token_request_in_flight(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    endpoint = FakeTokenEndpoint(token_reply())
    endpoint.gate = asyncio.Event()
    provider = service_account(path, endpoint, FakeClock())
    waiter = asyncio.create_task(provider.credential())
    await asyncio.sleep(0)
    await provider.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter


def test_service_account_validates_its_arguments(tmp_path: Path) -> None:
    ref = SecretRef.from_file(tmp_path / "sa.json")
    with pytest.raises(ValueError, match="scope"):
        ServiceAccountCredential(ref, FakeTokenEndpoint(token_reply()), scopes=())
    with pytest.raises(ValueError, match="refresh_margin_s"):
        ServiceAccountCredential(ref, FakeTokenEndpoint(token_reply()), refresh_margin_s=-1)


async def test_no_secret_material_reaches_logs_or_errors(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_key(tmp_path / "sa.json", rsa_key)
    pem_body = pem_of(rsa_key).splitlines()[1]
    endpoint = FakeTokenEndpoint(
        token_reply("ya29.super-secret-token", expires_in=3600),
        (400, b'{"error": "invalid_grant", "error_description": "bad ASSERTION-ECHO"}'),
    )
    clock = FakeClock()
    provider = service_account(path, endpoint, clock)
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        await provider.credential()
        clock.advance(3400)
        await provider.credential()  # early renewal fails: logged, old token kept
        clock.advance(1000)
        try:
            await provider.credential()
        except SecretError as error:
            errors.append(error)
    assert len(errors) == 1
    assertions = [endpoint.assertion(i) for i in range(len(endpoint.requests))]
    texts = [caplog.text, *(str(e) for e in errors), *(repr(e) for e in errors), repr(provider)]
    for text in texts:
        assert "ya29.super-secret-token" not in text
        assert "ASSERTION-ECHO" not in text
        assert pem_body not in text
        for assertion in assertions:
            assert assertion not in text
            assert assertion.split(".")[2] not in text  # not even the signature


# --------------------------------------------------------------------------- registry


def gemini(config: GeminiConfig) -> Deployment:
    return Deployment(
        name="g", model="gemini-2.5-flash", runtime=RuntimeKind.GEMINI, runtime_config=config
    )


def test_the_registry_hands_a_vertex_deployment_its_token_credential(tmp_path: Path) -> None:
    vertex = GeminiConfig(
        variant="vertex",
        project="p",
        region="us-central1",
        credentials=SecretRef.from_file(tmp_path / "sa.json"),
    )
    make = token_credential_for(gemini(vertex))
    assert make is not None
    credential = make(FakeTokenEndpoint(token_reply()))
    assert isinstance(credential, ServiceAccountCredential)
    assert credential.describe() == f"service-account file:{tmp_path / 'sa.json'}"


def test_an_api_key_is_sent_as_it_is() -> None:
    key = SecretRef.from_env("GEMINI_API_KEY")
    assert token_credential_for(gemini(GeminiConfig(api_key=key))) is None
    openai = Deployment(
        name="o",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(api_key=key),
    )
    assert token_credential_for(openai) is None
