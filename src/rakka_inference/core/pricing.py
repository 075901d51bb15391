"""What a request cost: the shipped price table, lookup by model name, and the arithmetic.

Prices come from ``core/data/prices.toml`` (list prices, USD per million tokens; its
header says what they cover and when they were checked). A deployment's
``[deployment.pricing]`` table overrides the entry for its model (:func:`resolve_price`).

A model that is neither in the table nor overridden has **no** price: lookups return
``None`` and callers report the cost as unknown. They never charge it as zero, which would
let a budget be overspent without limit.

Lookup (:meth:`PriceTable.lookup`) is case-insensitive and tries, in order:

1. the name as given, after removing one routing prefix (``openai/``, ``anthropic/``,
   ``google/``, and Gemini's ``models/``);
2. the longest table entry that the name starts with, followed by a *snapshot suffix*
   only: a date (``-2024-08-06``, ``-20250514``), a version number (``-001``),
   ``-latest``, ``-preview[-MM-DD]`` or ``-exp[-MMDD]``. So ``gpt-4o-2024-08-06`` costs
   what ``gpt-4o`` costs and ``gpt-4o-mini-2024-07-18`` what ``gpt-4o-mini`` costs.

A bare prefix match would be wrong in the expensive direction: ``o1-pro`` costs ten
times ``o1``, ``gpt-4o-realtime-preview`` and ``gemini-2.5-flash-image`` have their own
prices. Those names therefore resolve to nothing (unknown cost) until the table or an
override lists them.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

from rakka_inference.core.errors import ConfigError, ConfigIssue
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.usage import Usage

__all__ = ["LOCAL_PRICE", "PriceTable", "cost_usd", "normalize_model_name", "resolve_price"]

_TOKENS_PER_PRICE_UNIT = 1_000_000
_ROUTING_PREFIXES = ("openai/", "anthropic/", "google/", "models/")
_SNAPSHOT_SUFFIX = re.compile(
    r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3}|latest|preview(?:-\d{2}-\d{2}(?:\d{2})?)?|exp(?:-\d{4})?)"
)
_PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
_REQUIRED_FIELDS = ("input_per_mtok", "output_per_mtok")
_DATA_PACKAGE = "rakka_inference.core"
_DATA_FILE = "data/prices.toml"


def normalize_model_name(model: str) -> str:
    """The model name as the price table keys it: lower case, routing prefix removed."""
    name = model.strip().lower()
    for prefix in _ROUTING_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


class PriceTable:
    """Model name to :class:`~rakka_inference.core.policies.ModelPrice`. Immutable.

    Build the shipped one with :meth:`default`, or one from TOML text with
    :meth:`from_toml` (tests, operators' own tables).
    """

    __slots__ = ("_by_length", "_prices")

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        table = {normalize_model_name(name): price for name, price in prices.items()}
        self._prices: Mapping[str, ModelPrice] = MappingProxyType(table)
        # Longest first, so the first prefix that fits is the most specific one.
        self._by_length: tuple[str, ...] = tuple(sorted(table, key=len, reverse=True))

    @classmethod
    def default(cls) -> PriceTable:
        """The table shipped in the package (``core/data/prices.toml``), loaded once."""
        return _default_table()

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<prices>") -> PriceTable:
        """Parse and validate a price table in the format of the shipped file.

        Raises :class:`~rakka_inference.core.errors.ConfigError` listing every problem:
        TOML syntax, a missing ``models`` table, a model without ``input_per_mtok`` or
        ``output_per_mtok``, a price that is not a finite number >= 0, an unknown key.
        """
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([ConfigIssue(source, "", f"invalid TOML: {exc}")]) from None
        issues: list[ConfigIssue] = []
        prices: dict[str, ModelPrice] = {}
        models = document.get("models")
        if not isinstance(models, dict) or not models:
            issues.append(ConfigIssue(source, "models", "a non-empty [models] table is required"))
            models = {}
        issues.extend(
            ConfigIssue(source, key, "unknown key") for key in document if key != "models"
        )
        for name, entry in models.items():
            price = _parse_entry(source, name, entry, issues)
            if price is not None:
                prices[name] = price
        if issues:
            raise ConfigError(issues)
        return cls(prices)

    @property
    def models(self) -> tuple[str, ...]:
        """The model names listed, as normalized keys, sorted."""
        return tuple(sorted(self._prices))

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of ``model``, or ``None`` when it is unknown (see the module docstring)."""
        name = normalize_model_name(model)
        price = self._prices.get(name)
        if price is not None:
            return price
        for key in self._by_length:
            if name.startswith(key) and _SNAPSHOT_SUFFIX.fullmatch(name, len(key)):
                return self._prices[key]
        return None

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"


def _parse_entry(
    source: str, name: str, entry: Any, issues: list[ConfigIssue]
) -> ModelPrice | None:
    path = f'models."{name}"'
    if name != normalize_model_name(name):
        issues.append(
            ConfigIssue(source, path, "model names are lower case, without a routing prefix")
        )
    if not isinstance(entry, dict):
        issues.append(ConfigIssue(source, path, "must be a table of prices"))
        return None
    before = len(issues)
    issues.extend(
        ConfigIssue(source, f"{path}.{key}", "unknown key")
        for key in entry
        if key not in _PRICE_FIELDS
    )
    issues.extend(
        ConfigIssue(source, f"{path}.{key}", "is required")
        for key in _REQUIRED_FIELDS
        if key not in entry
    )
    for key in _PRICE_FIELDS:
        value = entry.get(key)
        # bool is an int to Python, but "input_per_mtok = true" is a mistake, not a price.
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            issues.append(
                ConfigIssue(source, f"{path}.{key}", f"must be a number >= 0, got {value!r}")
            )
    if len(issues) > before:
        return None
    cached = entry.get("cached_input_per_mtok")
    return ModelPrice(
        input_per_mtok=float(entry["input_per_mtok"]),
        output_per_mtok=float(entry["output_per_mtok"]),
        cached_input_per_mtok=None if cached is None else float(cached),
    )


@functools.cache
def _default_table() -> PriceTable:
    text = resources.files(_DATA_PACKAGE).joinpath(_DATA_FILE).read_text(encoding="utf-8")
    return PriceTable.from_toml(text, source=f"{_DATA_PACKAGE}/{_DATA_FILE}")


def cost_usd(usage: Usage, price: ModelPrice) -> float:
    """The USD cost of ``usage`` at ``price``.

    Uncached prompt tokens at the input price, cached ones at the cached price, and all
    output tokens (reasoning included, as providers bill it) at the output price.
    """
    micro_dollars = (
        usage.uncached_input_tokens * price.input_per_mtok
        + usage.cached_input_tokens * price.cached_input
        + usage.output_tokens * price.output_per_mtok
    )
    return micro_dollars / _TOKENS_PER_PRICE_UNIT


LOCAL_PRICE = ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0)
"""What a local engine's tokens cost unless its deployment sets ``pricing``: nothing (the
hardware is the operator's); set a price to count its spend in budgets and cost reports."""


def resolve_price(
    model: str,
    override: ModelPrice | None = None,
    table: PriceTable | None = None,
    *,
    local: bool = False,
) -> ModelPrice | None:
    """The price to charge for ``model``: the deployment's override if it has one, else
    :data:`LOCAL_PRICE` for a ``local`` engine, else the table's entry (the shipped table
    when none is given), else ``None`` (unknown)."""
    if override is not None:
        return override
    if local:
        return LOCAL_PRICE
    return (PriceTable.default() if table is None else table).lookup(model)
