from __future__ import annotations

import re

import pytest

from rakka_inference.core.errors import ConfigError
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.pricing import (
    PriceTable,
    cost_usd,
    normalize_model_name,
    resolve_price,
)
from rakka_inference.core.usage import Usage

REQUIRED_MODELS = [
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "o1",
    "o3",
    "o3-mini",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "claude-opus-4-5",
    "claude-opus-4-1",
    "claude-opus-4",
    "claude-sonnet-4-5",
    "claude-sonnet-4",
    "claude-3-7-sonnet",
    "claude-haiku-4-5",
    "claude-3-5-haiku",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-embedding-001",
]

SMALL_TABLE = """
[models."gpt-4o"]
input_per_mtok = 2.5
cached_input_per_mtok = 1.25
output_per_mtok = 10

[models."gpt-4o-mini"]
input_per_mtok = 0.15
output_per_mtok = 0.6

[models."o1"]
input_per_mtok = 15
output_per_mtok = 60
"""


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.from_toml(SMALL_TABLE)


class TestShippedTable:
    def test_loads_from_package_data(self) -> None:
        # Proves prices.toml is package data: read through importlib.resources, as it is
        # from an installed wheel.
        shipped = PriceTable.default()
        assert len(shipped) >= len(REQUIRED_MODELS)
        assert PriceTable.default() is shipped

    @pytest.mark.parametrize("model", REQUIRED_MODELS)
    def test_lists_every_required_model(self, model: str) -> None:
        price = PriceTable.default().lookup(model)
        assert price is not None
        assert price.input_per_mtok > 0
        assert price.output_per_mtok >= 0
        assert price.cached_input <= price.input_per_mtok

    def test_known_prices(self) -> None:
        shipped = PriceTable.default()
        assert shipped.lookup("gpt-4o") == ModelPrice(
            input_per_mtok=2.5, output_per_mtok=10.0, cached_input_per_mtok=1.25
        )
        assert shipped.lookup("claude-sonnet-4-20250514") == ModelPrice(
            input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3
        )
        assert shipped.lookup("gemini-2.5-flash") is not None

    @pytest.mark.parametrize(
        ("model", "expected"),
        [
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
            ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
            ("o3-mini-2025-01-31", "o3-mini"),
            ("o1-2024-12-17", "o1"),
            ("claude-sonnet-4-20250514", "claude-sonnet-4"),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("claude-opus-4-5-20251101", "claude-opus-4-5"),
            ("claude-opus-4-1-20250805", "claude-opus-4-1"),
            ("claude-opus-4-0", "claude-opus-4"),
            ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
            ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
            ("gemini-2.0-flash-001", "gemini-2.0-flash"),
            ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
            ("gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"),
            ("openai/gpt-4o", "gpt-4o"),
            ("anthropic/claude-haiku-4-5", "claude-haiku-4-5"),
            ("google/gemini-2.5-pro", "gemini-2.5-pro"),
            ("models/gemini-2.5-pro", "gemini-2.5-pro"),
            ("GPT-4o", "gpt-4o"),
        ],
    )
    def test_snapshots_and_prefixes_resolve(self, model: str, expected: str) -> None:
        shipped = PriceTable.default()
        assert shipped.lookup(model) == shipped.lookup(expected)
        assert model in shipped

    @pytest.mark.parametrize(
        "model",
        [
            # Different (pricier) models that merely start with a listed name.
            "o1-pro",
            "gpt-5-pro",
            "gpt-4o-realtime-preview",
            "gemini-2.5-flash-image",
            "claude-opus-4-6",
            # Not listed at all.
            "llama-3.1-8b-instruct",
            "litellm/gpt-4o",
            "",
        ],
    )
    def test_unknown_models_have_no_price(self, model: str) -> None:
        assert PriceTable.default().lookup(model) is None
        assert model not in PriceTable.default()


class TestLookup:
    def test_longest_prefix_wins(self, table: PriceTable) -> None:
        assert table.lookup("gpt-4o-mini-2024-07-18") == table.lookup("gpt-4o-mini")
        assert table.lookup("gpt-4o-2024-08-06") == table.lookup("gpt-4o")
        assert table.lookup("gpt-4o-mini") != table.lookup("gpt-4o")

    def test_contains_only_strings(self, table: PriceTable) -> None:
        assert "gpt-4o" in table
        assert 3 not in table

    def test_models_and_repr(self, table: PriceTable) -> None:
        assert table.models == ("gpt-4o", "gpt-4o-mini", "o1")
        assert repr(table) == "PriceTable(3 models)"

    def test_constructor_normalizes_keys(self) -> None:
        price = ModelPrice(input_per_mtok=1, output_per_mtok=2)
        table = PriceTable({"OpenAI/My-Model": price})
        assert table.models == ("my-model",)
        assert table.lookup("my-model-2025-01-01") is price

    def test_normalize_model_name(self) -> None:
        assert normalize_model_name(" Anthropic/Claude-Opus-4 ") == "claude-opus-4"
        assert normalize_model_name("gpt-4o") == "gpt-4o"


class TestValidation:
    def test_integer_prices_are_accepted(self, table: PriceTable) -> None:
        price = table.lookup("o1")
        assert price == ModelPrice(input_per_mtok=15.0, output_per_mtok=60.0)
        assert price is not None
        assert isinstance(price.input_per_mtok, float)
        assert price.cached_input_per_mtok is None

    def test_every_issue_is_reported(self) -> None:
        bad = """
        version = 2

        [models."a"]
        output_per_mtok = 1

        [models."b"]
        input_per_mtok = -1
        output_per_mtok = "cheap"
        cached_input_per_mtok = true

        [models."c"]
        input_per_mtok = 1
        output_per_mtok = 1
        input_per_token = 0.000001

        [models."D"]
        input_per_mtok = 1
        output_per_mtok = nan
        """
        with pytest.raises(ConfigError) as caught:
            PriceTable.from_toml(bad, source="prices.toml")
        issues = {(issue.path, issue.message.split(",")[0]) for issue in caught.value.issues}
        assert issues == {
            ("version", "unknown key"),
            ('models."a".input_per_mtok', "is required"),
            ('models."b".input_per_mtok', "must be a number >= 0"),
            ('models."b".output_per_mtok', "must be a number >= 0"),
            ('models."b".cached_input_per_mtok', "must be a number >= 0"),
            ('models."c".input_per_token', "unknown key"),
            ('models."D"', "model names are lower case"),
            ('models."D".output_per_mtok', "must be a number >= 0"),
        }
        assert all(issue.source == "prices.toml" for issue in caught.value.issues)
        assert "8 configuration errors" in str(caught.value)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "non-empty [models] table"),
            ("models = 3", "non-empty [models] table"),
            ("[models]", "non-empty [models] table"),
            ('[models]\n"gpt-4o" = 2.5', "must be a table of prices"),
            ("[models.x\n", "invalid TOML"),
        ],
    )
    def test_structural_errors(self, text: str, message: str) -> None:
        with pytest.raises(ConfigError, match=re.escape(message)):
            PriceTable.from_toml(text)


class TestCost:
    def test_formula(self) -> None:
        price = ModelPrice(input_per_mtok=2.5, output_per_mtok=10.0, cached_input_per_mtok=1.25)
        usage = Usage(input_tokens=1_000_000, cached_input_tokens=400_000, output_tokens=200_000)
        # 600k uncached x 2.5 + 400k cached x 1.25 + 200k output x 10, per million.
        assert cost_usd(usage, price) == pytest.approx(1.5 + 0.5 + 2.0)

    def test_cached_defaults_to_the_input_price(self) -> None:
        price = ModelPrice(input_per_mtok=3.0, output_per_mtok=0.0)
        usage = Usage(input_tokens=1000, cached_input_tokens=1000)
        assert cost_usd(usage, price) == pytest.approx(0.003)

    def test_reasoning_is_billed_as_output_once(self) -> None:
        price = ModelPrice(input_per_mtok=0.0, output_per_mtok=8.0)
        usage = Usage(output_tokens=1000, reasoning_tokens=800)
        assert cost_usd(usage, price) == pytest.approx(0.008)

    def test_zero_usage_costs_nothing(self) -> None:
        assert cost_usd(Usage(), ModelPrice(input_per_mtok=1, output_per_mtok=1)) == 0.0


class TestResolvePrice:
    def test_override_wins(self, table: PriceTable) -> None:
        override = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
        assert resolve_price("gpt-4o", override, table) is override
        assert resolve_price("unknown-model", override, table) is override

    def test_falls_back_to_the_table(self, table: PriceTable) -> None:
        assert resolve_price("gpt-4o-2024-08-06", None, table) == table.lookup("gpt-4o")

    def test_default_table(self) -> None:
        assert resolve_price("gpt-4o") == PriceTable.default().lookup("gpt-4o")

    def test_unknown_model_without_override_is_none(self, table: PriceTable) -> None:
        assert resolve_price("my-finetune", None, table) is None
