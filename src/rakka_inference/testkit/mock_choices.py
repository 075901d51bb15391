"""The mock providers' several choices and token log probabilities: deterministic, so a
test can check what comes back, in the OpenAI and the Gemini mock alike.

Choices (OpenAI's ``n``, Gemini's ``candidateCount``): choice 0 is the mock's usual
answer; choice ``i`` after it is that text followed by ``" (i+1)"`` — one word more, so the
choices differ in length and a stream's choices end apart — unless the text is a JSON
answer (structured output asked for), which every choice gives unchanged.

Tokens: an answer's tokens are its words, each after the first with the whitespace before
it (``"You said: hi"`` is ``"You"``, ``" said:"``, ``" hi"``), as
:func:`~rakka_inference.testkit.faults.count_tokens` counts them. Token ``i`` of an answer
has the log probability ``-(i % 4 + 1) / 8`` (exact in binary, so it crosses JSON
unchanged). Asked for ``k`` alternatives, a token's are itself first, then ``"alt1"``,
``"alt2"``, … each one less likely than the one before (by 1). Token ids (Gemini's
``tokenId``) are the CRC-32 of the token's UTF-8, modulo 32000.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

__all__ = [
    "choice_text",
    "gemini_logprobs",
    "openai_logprobs",
    "token_logprob",
    "tokens",
]

_TOKEN = re.compile(r"\s*\S+")


def choice_text(text: str, choice: int, *, structured: bool = False) -> str:
    """Choice ``choice``'s answer, given choice 0's ``text`` (see the module docstring)."""
    return text if choice == 0 or structured else f"{text} ({choice + 1})"


def tokens(text: str) -> list[str]:
    """``text`` as the mock's tokens; joined, they are ``text`` again."""
    found = _TOKEN.findall(text)
    rest = text[sum(map(len, found)) :]
    return [*found, rest] if rest else found


def token_logprob(position: int) -> float:
    """The log probability of the answer's token at ``position``."""
    return -((position % 4) + 1) / 8


def _alternatives(token: str, position: int, count: int) -> list[tuple[str, float]]:
    chosen = token_logprob(position)
    return [(token, chosen), *((f"alt{j}", chosen - j) for j in range(1, count))][:count]


def openai_logprobs(pieces: list[str], first_position: int, top: int) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` records of the tokens ``pieces``, the first of which is
    the answer's token number ``first_position``; ``top`` alternatives each."""
    records: list[dict[str, Any]] = []
    for offset, token in enumerate(pieces):
        position = first_position + offset
        records.append(
            {
                "token": token,
                "logprob": token_logprob(position),
                "bytes": list(token.encode()),
                "top_logprobs": [
                    {"token": other, "logprob": value, "bytes": list(other.encode())}
                    for other, value in _alternatives(token, position, top)
                ],
            }
        )
    return records


def gemini_logprobs(pieces: list[str], first_position: int, top: int) -> dict[str, Any]:
    """Gemini's ``logprobsResult`` for the tokens ``pieces`` (see :func:`openai_logprobs`);
    ``topCandidates`` only when ``top`` alternatives are asked for."""

    def candidate(token: str, value: float) -> dict[str, Any]:
        return {
            "token": token,
            "tokenId": zlib.crc32(token.encode()) % 32000,
            "logProbability": value,
        }

    positions = range(first_position, first_position + len(pieces))
    result: dict[str, Any] = {
        "chosenCandidates": [
            candidate(token, token_logprob(position))
            for token, position in zip(pieces, positions, strict=True)
        ],
        "logProbabilitySum": sum(token_logprob(position) for position in positions),
    }
    if top:
        result["topCandidates"] = [
            {"candidates": [candidate(*pair) for pair in _alternatives(token, position, top)]}
            for token, position in zip(pieces, positions, strict=True)
        ]
    return result
