"""Every route, fuzzed over real HTTP: one gateway (uvicorn, real sockets) in front of the
testkit's mock providers — the sandbox's deployments, OpenAI-, Anthropic- and
Gemini-format — is sent JSON bodies that are valid-ish requests with hostile leaves,
random JSON structures, raw bytes, and hostile headers, on ``/v1/chat/completions``,
``/v1/messages``, ``/v1/messages/count_tokens``, ``/v1/responses``, ``/v1/embeddings`` and
the GET routes. Whatever arrives, the answer is never a 5xx and its body is JSON (a
stream: every event's data is JSON, and no event is a server error).

Hypothesis runs derandomized with a fixed number of examples per route, so CI sends the
same requests every run, in seconds; a failure prints the request that caused it. Beside
it, a sweep sends every value of a complete, valid request of each route made hostile in
turn, which random examples reach too rarely. The requests are :mod:`fuzz_requests`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import zlib
from collections.abc import Iterator

import httpx
import pytest
from fuzz_json import encode, swept
from fuzz_requests import (
    CHAT,
    COUNT_TOKENS,
    EMBEDDINGS,
    ENCODINGS,
    HEADERS,
    MESSAGES,
    RESPONSES,
    SWEPT,
    SWEPT_EMBEDDINGS,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rakka_inference.apps.sandbox import Sandbox, sandbox_config
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.serving import serving

# --------------------------------------------------------------------------- the gateway


class Gateway:
    """The sandbox's mocks and a gateway in front of them, served on loopback from a loop
    in a thread of its own, for the synchronous Hypothesis tests to call over HTTP."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.url = ""

    def __enter__(self) -> Gateway:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(120)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(120)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()

    async def _stop(self) -> None:
        await self._stack.aclose()
        # Nothing may outlive the loop: a task still running here is a leak.
        current = asyncio.current_task()
        leaked = [task for task in asyncio.all_tasks() if task is not current]
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        assert not leaked, f"the gateway left tasks running: {leaked}"

    async def _start(self) -> str:
        sandbox = Sandbox()
        await sandbox.start()
        self._stack.push_async_callback(sandbox.stop)
        topology = Topology(sandbox_config(sandbox, bind="127.0.0.1:0", environ={}))
        return await self._stack.enter_async_context(serving(topology.gateway))


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with Gateway() as gateway, httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


# --------------------------------------------------------------------------- the checks


def answered_well(response: httpx.Response, request: str) -> None:
    """No 5xx, and a body of JSON: whole, or one JSON document per stream event."""
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    assert response.status_code < 500, f"{where}: {response.text[:500]}\nrequest: {request}"
    kind = response.headers.get("content-type", "")
    if response.request.method == "HEAD":
        assert response.content == b""
    elif kind.startswith("text/event-stream"):
        assert response.status_code == 200, where
        for line in response.text.splitlines():
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                continue
            event = json.loads(data)
            error = event.get("error") if isinstance(event, dict) else None
            kind_of_error = error.get("type") if isinstance(error, dict) else None
            assert kind_of_error not in ("server_error", "api_error"), f"{where}: {line}"
    else:
        assert kind == "application/json", f"{where}: {kind!r}"
        json.loads(response.content)
    if response.status_code == 429:
        assert "retry-after" in response.headers or "x-should-retry" in response.headers


def latin1(headers: dict[str, str]) -> dict[str, bytes]:
    """Header values as bytes: HTTP carries them as Latin-1, which httpx does not assume."""
    return {name: value.encode("latin-1") for name, value in headers.items()}


def post(
    client: httpx.Client, path: str, body: object, headers: dict[str, str], encoding: str
) -> None:
    text = encode(body)
    content = text.encode("utf-8", "surrogatepass")
    sent = latin1(headers)
    if encoding != "identity":
        sent["content-encoding"] = encoding.removesuffix("-corrupt").encode()
    if encoding == "gzip":
        content = gzip.compress(content)
    elif encoding == "deflate":
        content = zlib.compress(content)
    response = client.post(path, content=content, headers=sent)
    answered_well(response, f"{text[:2000]!r} headers={headers!r} encoding={encoding}")


FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Reproducible in CI: the same examples every run (no seed, no example database)."""


def budget(examples: int) -> settings:
    """:data:`FUZZ` with a fixed number of examples: the route's share of the run."""
    return settings(FUZZ, max_examples=examples)


@budget(150)
@given(body=CHAT, headers=HEADERS, encoding=ENCODINGS)
def test_chat_completions(
    client: httpx.Client, body: object, headers: dict[str, str], encoding: str
) -> None:
    post(client, "/v1/chat/completions", body, headers, encoding)


@budget(150)
@given(body=MESSAGES, headers=HEADERS, encoding=ENCODINGS)
def test_messages(
    client: httpx.Client, body: object, headers: dict[str, str], encoding: str
) -> None:
    post(client, "/v1/messages", body, headers, encoding)


@budget(60)
@given(body=COUNT_TOKENS, headers=HEADERS, encoding=ENCODINGS)
def test_count_tokens(
    client: httpx.Client, body: object, headers: dict[str, str], encoding: str
) -> None:
    post(client, "/v1/messages/count_tokens", body, headers, encoding)


@budget(120)
@given(body=RESPONSES, headers=HEADERS, encoding=ENCODINGS)
def test_responses(
    client: httpx.Client, body: object, headers: dict[str, str], encoding: str
) -> None:
    post(client, "/v1/responses", body, headers, encoding)


@budget(80)
@given(body=EMBEDDINGS, headers=HEADERS, encoding=ENCODINGS)
def test_embeddings(
    client: httpx.Client, body: object, headers: dict[str, str], encoding: str
) -> None:
    post(client, "/v1/embeddings", body, headers, encoding)


ROUTES = st.sampled_from(
    [
        "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens",
        "/v1/responses", "/v1/embeddings",
    ]
)  # fmt: skip


@budget(60)
@given(path=ROUTES, body=st.binary(max_size=64) | st.just(b"\x1f\x8b\x08\x00garbage"))
def test_bodies_that_are_not_json(client: httpx.Client, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    answered_well(response, repr(body))


PATHS = st.sampled_from(
    ["/v1/models", "/healthz", "/readyz", "/v1/models/sandbox", "/v1/models/sandbox-gpt"]
) | st.builds(
    lambda prefix, tail: prefix + tail,
    st.sampled_from(["/v1/models/", "/v1/", "/", "/admin/", "/v1/chat/completions/"]),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=40
    ),
)


@budget(60)
@given(path=PATHS, method=st.sampled_from(["GET", "HEAD", "DELETE", "PUT"]), headers=HEADERS)
def test_get_routes_and_unknown_urls(
    client: httpx.Client, path: str, method: str, headers: dict[str, str]
) -> None:
    response = client.request(method, path, headers=latin1(headers))
    answered_well(response, f"{method} {path!r} headers={headers!r}")


# --------------------------------------------------------------------------- the sweep


@pytest.mark.parametrize("route", sorted(SWEPT))
def test_every_value_of_a_valid_request_made_hostile(client: httpx.Client, route: str) -> None:
    sent = 0
    for template in SWEPT[route]:
        for model in ("sandbox-gpt", "sandbox-claude", "sandbox-gemini"):
            body = {"model": model, **template}
            assert client.post(route, json=body).status_code == 200, (model, template)
            for path, hostile in swept(body):
                text = encode(hostile)
                response = client.post(route, content=text.encode(), headers=JSON_TYPE)
                answered_well(response, f"{model} {path}: {text[:300]}")
                sent += 1
    assert sent > 100


def test_every_value_of_a_valid_embeddings_request_made_hostile(client: httpx.Client) -> None:
    assert client.post("/v1/embeddings", json=SWEPT_EMBEDDINGS).status_code == 200
    for path, hostile in swept(SWEPT_EMBEDDINGS):
        text = encode(hostile)
        response = client.post("/v1/embeddings", content=text.encode(), headers=JSON_TYPE)
        answered_well(response, f"{path}: {text[:300]}")


JSON_TYPE = {"content-type": "application/json"}


def test_the_fuzzed_gateway_answers_a_plain_request(client: httpx.Client) -> None:
    # The fixture is a working gateway: what the fuzz sees as a 400 is a refusal, not an
    # outage.
    body = {"model": "sandbox-gpt", "messages": [{"role": "user", "content": "hi"}]}
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
