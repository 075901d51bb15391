"""LangChain's ``OpenAIEmbeddings`` as a client of the gateway: it tokenizes with tiktoken
and sends token ids (``input: [[ids], …]``), which the gateway forwards to an OpenAI-format
upstream as ids, not as text.

tiktoken fetches its BPE files (``cl100k_base`` for the ``text-embedding-3`` models) from the
internet on first use, and CI has no internet. The test therefore builds a real
``tiktoken.Encoding`` of its own (the 256 single bytes plus a few merges, cl100k's split
pattern) and puts it into tiktoken's registry cache under the name LangChain asks for
(``tiktoken.registry.ENCODINGS["cl100k_base"]``). That cache is exactly where
``tiktoken.get_encoding`` looks before it downloads anything, so LangChain's own code path
(``encoding_for_model`` → ``get_encoding`` → ``encode_ordinary``) runs unchanged; only the
vocabulary is ours. The entry is put there with ``monkeypatch`` and removed after the test,
so no other test sees the stand-in vocabulary. A cache file under ``TIKTOKEN_CACHE_DIR``
would not do: tiktoken checks the file's SHA-256 against the real vocabulary's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx
import pytest
import tiktoken
import tiktoken.registry
from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.mock_openai import OpenAIMock, embedding_vector
from rakka_inference.testkit.serving import serving

KEY = "sk-langchain-upstream-0001"
MODEL = "text-embedding-3-small"  # tiktoken maps it to cl100k_base
# cl100k_base's pre-tokenizer pattern, simplified: words, numbers, punctuation, spaces.
PAT_STR = r"""'(?i:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MERGES = (b"th", b"the", b"at", b" c", b" cat", b" s", b" sat", b" m", b" mat", b"on", b" on")


def stand_in_encoding() -> tiktoken.Encoding:
    """A small byte-level BPE vocabulary: every byte, then :data:`MERGES` in rank order."""
    ranks = {bytes([byte]): byte for byte in range(256)}
    for merged in MERGES:
        ranks[merged] = len(ranks)
    return tiktoken.Encoding(
        name="cl100k_base",
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )


@dataclass
class Live:
    upstream: OpenAIMock
    embeddings: OpenAIEmbeddings
    encoding: tiktoken.Encoding


@pytest.fixture
async def live(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    encoding = stand_in_encoding()
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "cl100k_base", encoding)
    async with OpenAIMock() as upstream:
        deployment = Deployment(
            name=MODEL,
            model=MODEL,
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(
                endpoint=upstream.openai_base_url, api_key=SecretRef.inline(KEY, warn=False)
            ),
        )
        topology = Topology(Config(cluster=ClusterConfig(), deployments=(deployment,)))
        # LangChain's clients take our HTTP clients, so that the test can close them.
        async with (
            serving(topology.gateway) as base,
            httpx.AsyncClient() as http_async,
        ):
            with httpx.Client() as http:
                embeddings = OpenAIEmbeddings(
                    model=MODEL,
                    base_url=f"{base}/v1",
                    api_key=SecretStr("unused"),
                    max_retries=0,
                    http_client=http,
                    http_async_client=http_async,
                )
                yield Live(upstream, embeddings, encoding)


def _sent_inputs(upstream: OpenAIMock) -> list[object]:
    """The ``input`` of every embeddings request the upstream received, in order."""
    sent = [request for request in upstream.requests if request.path.endswith("/embeddings")]
    return [request.json()["input"] for request in sent]


def _close(vector: Sequence[float], expected: Sequence[float]) -> bool:
    return len(vector) == len(expected) and all(
        math.isclose(a, b, abs_tol=1e-6) for a, b in zip(vector, expected, strict=True)
    )


async def test_embed_documents_sends_token_ids_upstream_and_gets_the_vectors(live: Live) -> None:
    texts = ["the cat sat", "on the mat"]
    ids = [live.encoding.encode_ordinary(text) for text in texts]
    assert ids[0] == [256 + MERGES.index(piece) for piece in (b"the", b" cat", b" sat")]

    vectors = await asyncio.to_thread(live.embeddings.embed_documents, texts)

    # LangChain tokenized with the registered encoding; the gateway forwarded the ids as ids.
    assert _sent_inputs(live.upstream) == [ids]
    # The mock embeds ids by their decimal text: these are the vectors of exactly those ids.
    assert len(vectors) == 2
    for vector, token_ids in zip(vectors, ids, strict=True):
        assert _close(vector, embedding_vector(" ".join(map(str, token_ids))))
    assert not _close(vectors[0], embedding_vector(texts[0]))  # not re-sent as text


async def test_embed_query_and_the_async_client(live: Live) -> None:
    ids = live.encoding.encode_ordinary("on the mat")
    expected = embedding_vector(" ".join(map(str, ids)))

    vector = await asyncio.to_thread(live.embeddings.embed_query, "on the mat")
    again = await live.embeddings.aembed_query("on the mat")

    assert _close(vector, expected)
    assert _close(again, expected)
    assert _sent_inputs(live.upstream) == [[ids], [ids]]


async def test_a_text_longer_than_the_context_is_sent_in_chunks(live: Live) -> None:
    chunked = live.embeddings.model_copy(update={"embedding_ctx_length": 2})
    ids = live.encoding.encode_ordinary("the cat sat")  # three tokens → two chunks

    vectors = await chunked.aembed_documents(["the cat sat"])

    assert _sent_inputs(live.upstream) == [[ids[:2], ids[2:]]]
    # LangChain averages the chunks' vectors (weighted by their token counts) and normalises.
    first = embedding_vector(" ".join(map(str, ids[:2])))
    second = embedding_vector(" ".join(map(str, ids[2:])))
    mean = [(2 * a + b) / 3 for a, b in zip(first, second, strict=True)]
    norm = math.sqrt(sum(value * value for value in mean))
    assert len(vectors) == 1
    assert _close(vectors[0], [value / norm for value in mean])
