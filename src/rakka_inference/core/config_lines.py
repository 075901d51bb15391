"""Field paths in a TOML document, and the line each one is written on.

``tomllib`` gives values without positions, so configuration issues would name a field but
not a line. :class:`LineLocator` scans the raw text once, the way a reader would:

- ``[a.b]`` and ``[[a.b]]`` headers set the current table. Each ``[[array]]`` header adds an
  element, so headers are counted per array, and a later ``[a.c]`` header refers to the
  *last* element of ``a`` as TOML says (``a[2].c``);
- ``key = value`` lines, dotted keys (``x.y = 1``) included, record the line of the key;
- a value that spans lines (a multi-line string, a multi-line array) is consumed whole,
  so a line inside it that merely looks like a header or a key is never taken for one.

The text is assumed to be valid TOML (``tomllib`` has accepted it first).

A path is a tuple of parts: a key (``str``) or an array index (``int``). The locator answers
the line of the longest known prefix of a path, so a missing key falls back to the line of
the table that should have held it. :func:`format_path` writes a path the way issues show it:
``deployment[1].runtime_config.retry.max_retries``.
"""

from __future__ import annotations

import json
import re
from typing import TypeAlias

__all__ = ["FieldPath", "LineLocator", "format_path"]

FieldPath: TypeAlias = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_path(path: FieldPath) -> str:
    """``("deployment", 1, "retry")`` → ``deployment[1].retry``; odd keys are quoted."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
            continue
        key = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
        out.append(f".{key}" if out else key)
    return "".join(out)


class LineLocator:
    """Maps field paths of one TOML text to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self._lines: dict[FieldPath, int] = {}
        self._array_sizes: dict[FieldPath, int] = {}
        self._scan(text.splitlines())

    def line_of(self, path: FieldPath) -> int | None:
        """The line of ``path``'s key, else of the nearest enclosing table that is written."""
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return None

    def _scan(self, lines: list[str]) -> None:
        table: FieldPath = ()
        index = 0
        while index < len(lines):
            lineno = index + 1
            text = lines[index].strip()
            index += 1
            if not text or text.startswith("#"):
                continue
            if text.startswith("["):
                table = self._header(text, lineno, table)
                continue
            keys, pos = _parse_key(text, 0)
            pos = _skip_spaces(text, pos)
            if not keys or pos >= len(text) or text[pos] != "=":
                continue
            path = table + keys
            for end in range(len(table) + 1, len(path) + 1):
                self._lines.setdefault(path[:end], lineno)
            value = _ValueScanner()
            value.feed(text[pos + 1 :])
            while value.is_open and index < len(lines):
                value.feed(lines[index])
                index += 1

    def _header(self, text: str, lineno: int, current: FieldPath) -> FieldPath:
        is_array = text.startswith("[[")
        keys, _ = _parse_key(text, 2 if is_array else 1)
        if not keys:
            return current
        path: FieldPath = ()
        for position, key in enumerate(keys):
            path += (key,)
            names_new_element = is_array and position == len(keys) - 1
            size = self._array_sizes.get(path)
            if size is not None and not names_new_element:
                path += (size - 1,)
        if is_array:
            self._lines.setdefault(path, lineno)
            size = self._array_sizes.get(path, 0)
            self._array_sizes[path] = size + 1
            path += (size,)
        self._lines.setdefault(path, lineno)
        return path


def _skip_spaces(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _parse_key(text: str, pos: int) -> tuple[tuple[str, ...], int]:
    """Parse a (dotted) key starting at ``pos``; return its parts and the position after it."""
    parts: list[str] = []
    while True:
        pos = _skip_spaces(text, pos)
        if pos >= len(text):
            break
        char = text[pos]
        if char in "\"'":
            end = _string_end(text, pos + 1, char)
            raw = text[pos + 1 : end]
            parts.append(_unescape(raw) if char == '"' else raw)
            pos = end + 1
        else:
            match = _BARE_KEY.match(text, pos)
            if match is None:
                break
            parts.append(match.group())
            pos = match.end()
        pos = _skip_spaces(text, pos)
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        break
    return tuple(parts), pos


def _string_end(text: str, pos: int, quote: str) -> int:
    """The index of the quote closing a one-line string whose content starts at ``pos``."""
    while pos < len(text):
        if quote == '"' and text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == quote:
            return pos
        pos += 1
    return len(text)


def _unescape(raw: str) -> str:
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


class _ValueScanner:
    """Follows one TOML value across lines: open brackets and multi-line strings."""

    def __init__(self) -> None:
        self._depth = 0
        self._multiline: str | None = None

    @property
    def is_open(self) -> bool:
        return self._depth > 0 or self._multiline is not None

    def feed(self, line: str) -> None:
        pos = 0
        while pos < len(line):
            if self._multiline is not None:
                pos = self._in_multiline(line, pos)
                continue
            char = line[pos]
            if char == "#":
                return
            if line.startswith(('"""', "'''"), pos):
                self._multiline = line[pos : pos + 3]
                pos += 3
            elif char in "\"'":
                pos = _string_end(line, pos + 1, char) + 1
            else:
                if char in "[{":
                    self._depth += 1
                elif char in "]}":
                    self._depth -= 1
                pos += 1

    def _in_multiline(self, line: str, pos: int) -> int:
        delimiter = self._multiline
        assert delimiter is not None
        quote = delimiter[0]
        while pos < len(line):
            if quote == '"' and line[pos] == "\\":
                pos += 2
                continue
            if line.startswith(delimiter, pos):
                # Up to two quotes right before the closing delimiter belong to the content.
                end = pos
                while end < len(line) and line[end] == quote:
                    end += 1
                self._multiline = None
                return end
            pos += 1
        return pos
