"""Secrets that cannot leak by accident, and references to where they live.

A :class:`Secret` holds a credential's value. Its ``repr``, ``str`` and format are a fixed
mask, it refuses to be pickled or copied into JSON, and the only way to read it is the
explicit :meth:`Secret.expose`. Equality is constant-time.

A :class:`SecretRef` says where a secret comes from: an environment variable, a file, or
(discouraged) the configuration itself. It is resolved when used, not when the config is
loaded, so rotating a key file or variable takes effect at the next session rebuild.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from rakka_inference.core.errors import SecretError

__all__ = ["InlineSecretWarning", "Secret", "SecretRef"]

_MASK = "Secret('**********')"


class Secret:
    """A secret value with no readable representation."""

    __slots__ = ("_value",)

    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret value must be a str")
        object.__setattr__(self, "_value", value)

    def expose(self) -> str:
        """The value itself. Call it only where the value leaves for its destination."""
        return self._value

    def fingerprint(self) -> str:
        """A short stable identifier of the value (a keyed hash), safe for labels and keys.

        Two equal secrets share a fingerprint; the value cannot be recovered from it.
        """
        digest = hashlib.blake2b(self._value.encode("utf-8"), digest_size=8, person=b"rakka-key-fp")
        return digest.hexdigest()

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode("utf-8"), other._value.encode("utf-8"))

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __len__(self) -> int:
        return len(self._value)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> NoReturn:
        raise SecretError("a Secret cannot be pickled")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise SecretError("a Secret cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise SecretError("a Secret cannot be pickled")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


class InlineSecretWarning(UserWarning):
    """A secret was written inline in a configuration file."""


SecretSource = Literal["env", "file", "inline"]


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives. Resolve it with :meth:`resolve` each time it is needed."""

    source: SecretSource
    location: str = ""
    _inline: Secret | None = None

    @classmethod
    def from_env(cls, name: str) -> SecretRef:
        if not name:
            raise ValueError("environment variable name must not be empty")
        return cls("env", name)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SecretRef:
        text = os.fspath(path)
        if not text:
            raise ValueError("secret file path must not be empty")
        return cls("file", text)

    @classmethod
    def inline(cls, value: str | Secret, *, warn: bool = True) -> SecretRef:
        """A secret given directly. Allowed, but it warns: shared files should not hold keys."""
        if warn:
            warnings.warn(
                "a secret is given inline; prefer { from_env = ... } or { from_file = ... }",
                InlineSecretWarning,
                stacklevel=2,
            )
        secret = value if isinstance(value, Secret) else Secret(value)
        return cls("inline", "", secret)

    def describe(self) -> str:
        """Where the secret comes from, for summaries and logs. Never the value."""
        if self.source == "inline":
            return "inline"
        return f"{self.source}:{self.location}"

    def resolve(self, environ: Mapping[str, str] | None = None) -> Secret:
        """Read the secret now. Raises :class:`SecretError` naming the source on failure
        (never what was read: a file that is not UTF-8 text is said to be so, no more)."""
        if self.source == "inline":
            assert self._inline is not None
            return self._inline
        if self.source == "env":
            env = os.environ if environ is None else environ
            value = env.get(self.location)
            if value is None or value == "":
                raise SecretError(f"secret {self.describe()} is not set")
            return Secret(value)
        try:
            value = Path(self.location).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(
                f"secret {self.describe()} cannot be read: {exc.strerror or type(exc).__name__}"
            ) from None
        except UnicodeDecodeError:
            # Its message quotes a byte of the file: say what is wrong, not where.
            raise SecretError(f"secret {self.describe()} is not UTF-8 text") from None
        value = value.strip()
        if not value:
            raise SecretError(f"secret {self.describe()} is empty")
        return Secret(value)

    def is_available(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether :meth:`resolve` would succeed now."""
        try:
            self.resolve(environ)
        except SecretError:
            return False
        return True

    def __repr__(self) -> str:
        return f"SecretRef({self.describe()})"
