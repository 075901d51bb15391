from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rakka_inference.core.usage import Usage, UsageAccumulator, UsageMode

counts = st.integers(min_value=0, max_value=10**9)
usages = st.builds(
    Usage,
    input_tokens=counts,
    output_tokens=counts,
    cached_input_tokens=counts,
    reasoning_tokens=counts,
)


def running_totals(increments: list[Usage]) -> list[Usage]:
    """The running totals a cumulative provider would report for these increments."""
    return list(itertools.accumulate(increments, lambda a, b: a + b))


class TestUsage:
    def test_defaults_are_zero(self) -> None:
        usage = Usage()
        assert usage.total_tokens == 0
        assert usage.is_zero

    def test_total_counts_input_and_output_only(self) -> None:
        # cached and reasoning tokens are subsets of input and output: not added again.
        usage = Usage(
            input_tokens=100, output_tokens=40, cached_input_tokens=60, reasoning_tokens=30
        )
        assert usage.total_tokens == 140
        assert usage.uncached_input_tokens == 40
        assert not usage.is_zero

    def test_uncached_never_negative(self) -> None:
        assert Usage(input_tokens=5, cached_input_tokens=9).uncached_input_tokens == 0

    def test_add_is_field_wise(self) -> None:
        a = Usage(input_tokens=1, output_tokens=2, cached_input_tokens=3, reasoning_tokens=4)
        b = Usage(input_tokens=10, output_tokens=20, cached_input_tokens=30, reasoning_tokens=40)
        assert a + b == Usage(
            input_tokens=11, output_tokens=22, cached_input_tokens=33, reasoning_tokens=44
        )

    def test_add_rejects_other_types(self) -> None:
        with pytest.raises(TypeError):
            _ = Usage() + 1  # type: ignore[operator]

    def test_maximum_and_minus(self) -> None:
        a = Usage(input_tokens=5, output_tokens=1)
        b = Usage(input_tokens=3, output_tokens=4, reasoning_tokens=2)
        assert a.maximum(b) == Usage(input_tokens=5, output_tokens=4, reasoning_tokens=2)
        assert b.minus(a) == Usage(output_tokens=3, reasoning_tokens=2)

    @pytest.mark.parametrize(
        "field", ["input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens"]
    )
    def test_negative_counts_are_rejected(self, field: str) -> None:
        with pytest.raises(ValueError, match=field):
            Usage(**{field: -1})

    def test_is_immutable(self) -> None:
        usage = Usage()
        with pytest.raises(AttributeError):
            usage.input_tokens = 3  # type: ignore[misc]


class TestUsageAccumulator:
    def test_empty_accumulator(self) -> None:
        accumulator = UsageAccumulator()
        assert accumulator.mode is UsageMode.DELTA
        assert accumulator.total == Usage()
        assert not accumulator.reported

    def test_a_zero_report_still_counts_as_reported(self) -> None:
        accumulator = UsageAccumulator(UsageMode.CUMULATIVE)
        assert accumulator.add(Usage()) == Usage()
        assert accumulator.reported

    def test_delta_sums_and_returns_the_increment(self) -> None:
        accumulator = UsageAccumulator(UsageMode.DELTA)
        assert accumulator.add(Usage(input_tokens=10)) == Usage(input_tokens=10)
        assert accumulator.add(Usage(output_tokens=3)) == Usage(output_tokens=3)
        assert accumulator.add(Usage(output_tokens=3)) == Usage(output_tokens=3)
        assert accumulator.total == Usage(input_tokens=10, output_tokens=6)

    def test_cumulative_takes_the_latest_total(self) -> None:
        accumulator = UsageAccumulator(UsageMode.CUMULATIVE)
        accumulator.add(Usage(input_tokens=50, output_tokens=1))
        assert accumulator.add(Usage(input_tokens=50, output_tokens=7)) == Usage(output_tokens=6)
        assert accumulator.total == Usage(input_tokens=50, output_tokens=7)

    def test_cumulative_omitted_field_does_not_erase(self) -> None:
        # Gemini's last chunk may carry only candidatesTokenCount; the prompt count stays.
        accumulator = UsageAccumulator(UsageMode.CUMULATIVE)
        accumulator.add(Usage(input_tokens=50, cached_input_tokens=20, output_tokens=1))
        assert accumulator.add(Usage(output_tokens=9)) == Usage(output_tokens=8)
        assert accumulator.total == Usage(input_tokens=50, cached_input_tokens=20, output_tokens=9)

    def test_anthropic_stream_mixes_modes(self) -> None:
        # message_start: the prompt (a total) and an early output count; message_delta: the
        # running output count. Both are totals of different things; no double counting.
        accumulator = UsageAccumulator(UsageMode.CUMULATIVE)
        accumulator.add(Usage(input_tokens=1200, cached_input_tokens=1000, output_tokens=1))
        accumulator.add(Usage(output_tokens=15))
        accumulator.add(Usage(output_tokens=42))
        assert accumulator.total == Usage(
            input_tokens=1200, cached_input_tokens=1000, output_tokens=42
        )

    def test_per_call_mode_override(self) -> None:
        accumulator = UsageAccumulator(UsageMode.DELTA)
        accumulator.add(Usage(input_tokens=30), mode=UsageMode.CUMULATIVE)
        accumulator.add(Usage(input_tokens=30), mode=UsageMode.CUMULATIVE)
        accumulator.add(Usage(output_tokens=2))
        accumulator.add(Usage(output_tokens=2))
        assert accumulator.total == Usage(input_tokens=30, output_tokens=4)

    @given(st.lists(usages, max_size=20))
    def test_delta_total_is_the_sum(self, reports: list[Usage]) -> None:
        accumulator = UsageAccumulator(UsageMode.DELTA)
        added = [accumulator.add(report) for report in reports]
        assert accumulator.total == sum(reports, Usage())
        assert added == reports

    @given(st.lists(usages, min_size=1, max_size=20), st.data())
    def test_cumulative_prefix_gives_the_last_total(
        self, increments: list[Usage], data: st.DataObject
    ) -> None:
        totals = running_totals(increments)
        prefix = totals[: data.draw(st.integers(min_value=1, max_value=len(totals)))]
        accumulator = UsageAccumulator(UsageMode.CUMULATIVE)
        added = [accumulator.add(report) for report in prefix]
        assert accumulator.total == prefix[-1]
        # What each report added sums to the total: increments can be re-emitted downstream.
        assert sum(added, Usage()) == prefix[-1]

    @given(st.lists(usages, min_size=1, max_size=20), st.data())
    def test_cumulative_report_twice_changes_nothing(
        self, increments: list[Usage], data: st.DataObject
    ) -> None:
        totals = running_totals(increments)
        accumulator = UsageAccumulator(UsageMode.CUMULATIVE)
        for report in totals:
            accumulator.add(report)
        before = accumulator.total
        repeated = data.draw(st.sampled_from(totals))
        assert accumulator.add(repeated) == Usage()
        assert accumulator.total == before

    @given(
        st.lists(usages, min_size=1, max_size=20),
        st.lists(st.booleans(), min_size=80, max_size=80),
    )
    def test_cumulative_with_omitted_fields(
        self, increments: list[Usage], omit: list[bool]
    ) -> None:
        # Any report may leave out any field (read as 0), except the last one: the final
        # total is still the last running total.
        totals = running_totals(increments)
        accumulator = UsageAccumulator(UsageMode.CUMULATIVE)
        for i, total in enumerate(totals[:-1]):
            flags = omit[4 * i : 4 * i + 4]
            accumulator.add(
                Usage(
                    input_tokens=0 if flags[0] else total.input_tokens,
                    output_tokens=0 if flags[1] else total.output_tokens,
                    cached_input_tokens=0 if flags[2] else total.cached_input_tokens,
                    reasoning_tokens=0 if flags[3] else total.reasoning_tokens,
                )
            )
        accumulator.add(totals[-1])
        assert accumulator.total == totals[-1]
