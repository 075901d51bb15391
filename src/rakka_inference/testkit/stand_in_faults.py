"""What the stand-in engine (:mod:`rakka_inference.testkit.stand_in_engine`, which sets
out the protocol) is scripted to do: its faults, its record of starts, and its replies.

The faults file and the starts record live in the directory named by :data:`DIR_ENV`.
:func:`read_faults` is forgiving: a missing, unreadable or broken file means no faults,
and a key of the wrong type is ignored alone, so a test may rewrite the file while the
engine reads it. :func:`plan_reply` is what the stand-in model answers a chat request,
sans-I/O: deterministic text, cut by ``max_tokens`` and ``stop``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DIR_ENV",
    "ECHO_ENV",
    "ChatError",
    "MetricsOverride",
    "StandInFaults",
    "read_faults",
    "record_start",
    "InvalidChatRequest",
    "Reply",
    "plan_reply",
]

DIR_ENV = "RAKKA_STAND_IN_DIR"
"""The directory holding ``faults.json`` (read) and ``starts.jsonl`` (appended)."""
ECHO_ENV = "RAKKA_STAND_IN_ECHO_ENV"
"""Comma-separated names of further environment variables a start record copies."""
FAULTS_FILE = "faults.json"
STARTS_FILE = "starts.jsonl"


@dataclass(frozen=True, slots=True)
class ChatError:
    """The OpenAI error every chat request is answered with."""

    status: int = 500
    message: str = "stand-in chat error"
    type: str = "server_error"
    code: str | int | None = None
    param: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True, slots=True)
class MetricsOverride:
    """Gauges reported instead of the real ones (None: the real one)."""

    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None


@dataclass(frozen=True, slots=True)
class StandInFaults:
    """What goes wrong; the default is nothing."""

    start_delay_ms: float = 0.0
    exit_on_start: int | None = None
    exit_on_start_times: int | None = None
    hang_health: bool = False
    health_status: int | None = None
    crash_after_chunks: int | None = None
    chunk_delay_ms: float = 0.0
    chat_error: ChatError | None = None
    metrics: MetricsOverride = field(default_factory=MetricsOverride)
    ignore_sigterm: bool = False

    def exits_on_start(self, start_number: int) -> int | None:
        """The status the ``start_number``-th start (from 1) exits with, if it does."""
        times = self.exit_on_start_times
        if self.exit_on_start is None or (times is not None and start_number > times):
            return None
        return self.exit_on_start


def read_faults(directory: str | None, port: int | None = None) -> StandInFaults:
    """The faults in ``directory``'s ``faults.json``; none without one. Its ``per_port``
    object holds faults for the engine on one port only (``{"8001": {...}}``), which
    replace the file's own keys of the same name for that engine."""
    if directory is None:
        return StandInFaults()
    try:
        raw = json.loads(Path(directory, FAULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return StandInFaults()
    if not isinstance(raw, dict):
        return StandInFaults()
    per_port = raw.pop("per_port", None)
    if isinstance(per_port, dict) and isinstance(mine := per_port.get(str(port)), dict):
        raw.update(mine)
    chat_error = raw.get("chat_error")
    metrics = raw.get("metrics")
    return StandInFaults(
        start_delay_ms=_number(raw.get("start_delay_ms")) or 0.0,
        exit_on_start=_int(raw.get("exit_on_start")),
        exit_on_start_times=_int(raw.get("exit_on_start_times")),
        hang_health=raw.get("hang_health") is True,
        health_status=_int(raw.get("health_status")),
        crash_after_chunks=_int(raw.get("crash_after_chunks")),
        chunk_delay_ms=_number(raw.get("chunk_delay_ms")) or 0.0,
        chat_error=_chat_error(chat_error) if isinstance(chat_error, dict) else None,
        metrics=_metrics(metrics) if isinstance(metrics, dict) else MetricsOverride(),
        ignore_sigterm=raw.get("ignore_sigterm") is True,
    )


def record_start(
    directory: str,
    *,
    flavor: str,
    argv: Sequence[str],
    options: Mapping[str, Any],
    unknown: Sequence[str],
    environ: Mapping[str, str],
) -> int:
    """Append this start to ``starts.jsonl``; which start it is, counting from 1.

    The record: ``pid``, ``flavor``, ``argv`` (what followed FLAVOR), ``options`` (the
    parsed known ones), ``unknown``, ``cuda_visible_devices`` (None when unset) and ``env``:
    the ``RAKKA_STAND_IN_*`` variables and those named in :data:`ECHO_ENV`.
    """
    echoed = {name.strip() for name in environ.get(ECHO_ENV, "").split(",") if name.strip()}
    record = {
        "pid": os.getpid(),
        "flavor": flavor,
        "argv": list(argv),
        "options": dict(options),
        "unknown": list(unknown),
        "cuda_visible_devices": environ.get("CUDA_VISIBLE_DEVICES"),
        "env": {
            name: value
            for name, value in sorted(environ.items())
            if name.startswith("RAKKA_STAND_IN_") or name in echoed
        },
    }
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory, STARTS_FILE)
    with path.open("a", encoding="utf-8") as starts:  # one write: appends do not interleave
        starts.write(json.dumps(record) + "\n")
    with path.open(encoding="utf-8") as starts:
        return sum(1 for _ in starts)


def _chat_error(raw: dict[str, Any]) -> ChatError:
    default = ChatError()
    code = raw.get("code")
    param = raw.get("param")
    return ChatError(
        status=_int(raw.get("status")) or default.status,
        message=str(raw.get("message", default.message)),
        type=str(raw.get("type", default.type)),
        code=code if isinstance(code, str | int) and not isinstance(code, bool) else None,
        param=param if isinstance(param, str) else None,
    )


def _metrics(raw: dict[str, Any]) -> MetricsOverride:
    return MetricsOverride(
        running=_number(raw.get("running")),
        waiting=_number(raw.get("waiting")),
        kv_cache_usage=_number(raw.get("kv_cache_usage")),
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


# ------------------------------------------------------------------ replies


class InvalidChatRequest(ValueError):
    """A chat request answered with a 400; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Reply:
    """What the stand-in model answers one chat request: sans-I/O, see :func:`plan_reply`."""

    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int

    def usage(self) -> dict[str, int]:
        completion = len(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


def plan_reply(flavor: str, body: Mapping[str, Any]) -> Reply:
    """The reply to a chat request's ``body``; raises :class:`InvalidChatRequest`."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidChatRequest("'messages' must be a non-empty list", "messages")
    if not all(isinstance(message, dict) for message in messages):
        raise InvalidChatRequest("each message must be an object", "messages")
    texts = [_text(message.get("content")) for message in messages]
    roles = [message.get("role") for message in messages]
    users = [text for role, text in zip(roles, texts, strict=True) if role == "user"]
    cap = body.get("max_completion_tokens")
    cap = body.get("max_tokens") if cap is None else cap
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise InvalidChatRequest("'max_tokens' must be a positive integer", "max_tokens")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [text for text in stops if isinstance(text, str) and text]
    words = users[-1].split() if users else []
    tokens: list[str] = []
    finish = "stop"
    for token in [f"stand-in {flavor} reply:", *(f" {word}" for word in words)]:
        if len(tokens) == cap:
            finish = "length"
            break
        cut = min((token.find(text) for text in stops if text in token), default=-1)
        if cut >= 0:
            tokens += [token[:cut]] if cut else []
            break
        tokens.append(token)
    prompt = sum(len(text.split()) for text in texts) + len(messages)
    return Reply(tuple(tokens), finish, prompt)


def _text(content: object) -> str:
    """A message's text: a string, or its content parts' texts, a line each."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        return "\n".join(part for part in parts if isinstance(part, str))
    return ""
