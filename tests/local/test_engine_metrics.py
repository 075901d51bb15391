"""The engine servers' Prometheus text, read into an EngineLoad."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.local.engine_metrics import METRIC_NAMES, EngineLoad, parse_engine_metrics

MODEL = 'model_name="meta-llama/Llama-3.1-8B-Instruct"'

VLLM = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 12043.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",{MODEL}}} 3.0
vllm:num_requests_running{{engine="1",{MODEL}}} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",{MODEL}}} 4.0
vllm:num_requests_waiting{{engine="1",{MODEL}}} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",{MODEL}}} 0.4375
vllm:kv_cache_usage_perc{{engine="1",{MODEL}}} 0.125
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",{MODEL}}} 12000.0
vllm:prompt_tokens_total{{engine="1",{MODEL}}} 345.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{{engine="0",{MODEL}}} 1.7311e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",{MODEL}}} 6789.0
vllm:generation_tokens_total{{engine="1",{MODEL}}} 11.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",{MODEL}}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",{MODEL}}} 42.0
vllm:time_to_first_token_seconds_count{{engine="0",{MODEL}}} 42.0
"""

VLLM_OLD = f"""\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{MODEL}}} 1.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{{MODEL}}} 0.25
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{{{MODEL}}} 0.9
"""

SGLANG = f"""\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{{engine_type="unified",{MODEL},pp_rank="0",tp_rank="0"}} 4.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{{engine_type="unified",{MODEL},pp_rank="0",tp_rank="0"}} 1.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{{engine_type="unified",{MODEL},pp_rank="0",tp_rank="0"}} 0.28
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{{engine_type="unified",{MODEL},pp_rank="0",tp_rank="0"}} 95.3
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{{{MODEL}}} 8000.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{{{MODEL}}} 4000.0
"""

LLAMACPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 4
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 0.061
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 16
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 65.5738
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.0234375
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 96
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
"""


@pytest.mark.parametrize(
    ("text", "runtime", "expected"),
    [
        pytest.param(
            VLLM,
            RuntimeKind.VLLM,
            EngineLoad(
                running=5.0,
                waiting=4.0,
                kv_cache_usage=0.4375,
                generated_tokens=6800.0,
                prompt_tokens=12345.0,
            ),
            id="vllm-data-parallel",
        ),
        pytest.param(
            VLLM_OLD, RuntimeKind.VLLM, EngineLoad(running=1.0, kv_cache_usage=0.25), id="vllm-0.6"
        ),
        pytest.param(
            SGLANG,
            RuntimeKind.SGLANG,
            EngineLoad(
                running=4.0,
                waiting=1.0,
                kv_cache_usage=0.28,
                generated_tokens=4000.0,
                prompt_tokens=8000.0,
            ),
            id="sglang",
        ),
        pytest.param(
            LLAMACPP,
            RuntimeKind.LLAMACPP,
            EngineLoad(
                running=1.0,
                waiting=0.0,
                kv_cache_usage=0.0234375,
                generated_tokens=16.0,
                prompt_tokens=4.0,
            ),
            id="llamacpp",
        ),
    ],
)
def test_each_engines_scrape_reads_as_its_load(
    text: str, runtime: RuntimeKind, expected: EngineLoad
) -> None:
    assert parse_engine_metrics(text, runtime) == expected


def test_another_engines_names_say_nothing() -> None:
    assert parse_engine_metrics(VLLM, RuntimeKind.SGLANG) == EngineLoad()
    assert parse_engine_metrics("", RuntimeKind.LLAMACPP) == EngineLoad()


def test_only_engine_runtimes_have_metric_names() -> None:
    assert set(METRIC_NAMES) == {RuntimeKind.VLLM, RuntimeKind.SGLANG, RuntimeKind.LLAMACPP}
    with pytest.raises(ValueError, match="'openai' has no engine metrics"):
        parse_engine_metrics(VLLM, RuntimeKind.OPENAI)


def test_crlf_and_timestamps_and_exemplars_read_the_same() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\r\n"
        "\r\n"
        'vllm:num_requests_running{model_name="m"} 2 1712345678901\r\n'
        "vllm:num_requests_waiting 3 -5\r\n"
        'vllm:generation_tokens_total{model_name="m"} 7 # {trace_id="abc"} 1.0 1.5e9\r\n'
        "   vllm:prompt_tokens_total\t9   \r\n"
    )
    assert parse_engine_metrics(text, RuntimeKind.VLLM) == EngineLoad(
        running=2.0, waiting=3.0, generated_tokens=7.0, prompt_tokens=9.0
    )


def test_label_values_may_hold_quotes_braces_commas_and_spaces() -> None:
    text = "\n".join(
        [
            r'vllm:num_requests_running{model_name="a \"quoted\" } name, b=\"c\"",x="y"} 1',
            r'vllm:num_requests_running{model_name="ends in backslash \\"} 2',
            r'vllm:num_requests_running{ model_name = "spaced" , tp_rank="0", } 4',
            "vllm:num_requests_running {} 8",
            'vllm:num_requests_running{model_name="unicode \u2028 line sep"} 16',
        ]
    )
    assert parse_engine_metrics(text, RuntimeKind.VLLM).running == 31.0


@pytest.mark.parametrize(
    "line",
    [
        'vllm:num_requests_running{model_name="never closed} 1',
        'vllm:num_requests_running{model_name="m" 1',
        "vllm:num_requests_running{model_name=m} 1",
        'vllm:num_requests_running{model_name "m"} 1',
        'vllm:num_requests_running{model_name="m" tp_rank="0"} 1',
        'vllm:num_requests_running{"m"} 1',
        'vllm:num_requests_running{model_name="m"}',
        "vllm:num_requests_running",
        "vllm:num_requests_running 1 2 3",
        "vllm:num_requests_running 1 soon",
        "vllm:num_requests_running one",
        "vllm:num_requests_running 1_000",
        "vllm:num_requests_running \u0661",  # an Arabic-Indic one: float() reads it, Prometheus not
        "vllm:num_requests_running NaN",
        "vllm:num_requests_running +Inf",
        "vllm:num_requests_running -Inf",
        "vllm:num_requests_running -1",
        "vllm:num_requests_running 1 NaN",
        "{vllm:num_requests_running} 1",
        "vllm:num_requests_running_other 1",
    ],
)
def test_a_malformed_or_meaningless_sample_is_skipped_alone(line: str) -> None:
    text = f"vllm:num_requests_waiting 1\n{line}\nvllm:num_requests_waiting 2\n"
    assert parse_engine_metrics(text, RuntimeKind.VLLM) == EngineLoad(waiting=3.0)


def test_kv_cache_usage_is_the_highest_series_clamped_into_0_1() -> None:
    text = 'sglang:token_usage{tp_rank="0"} 0.5\nsglang:token_usage{tp_rank="1"} 1.75\n'
    assert parse_engine_metrics(text, RuntimeKind.SGLANG).kv_cache_usage == 1.0
    text = "sglang:token_usage 0\nsglang:token_usage 0.0\n"
    assert parse_engine_metrics(text, RuntimeKind.SGLANG).kv_cache_usage == 0.0


def test_hostile_input_of_the_callers_cap_is_read_in_one_pass() -> None:
    # Long runs of backslashes and quotes inside one label value, and one huge line: a
    # scanner that went back over them (or a backtracking regex) would never finish.
    value = ('\\"' * 200_000) + "\\\\"
    text = f'vllm:num_requests_running{{model_name="{value}"}} 1\n' + ("{" * 200_000)
    assert parse_engine_metrics(text, RuntimeKind.VLLM) == EngineLoad(running=1.0)
    unclosed = 'vllm:num_requests_running{a="' + "\\" * 500_000 + '"' * 300_000
    assert parse_engine_metrics(unclosed, RuntimeKind.VLLM) == EngineLoad()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    *METRIC_NAMES[RuntimeKind.VLLM],
                    "{",
                    "}",
                    '"',
                    "\\",
                    "=",
                    ",",
                    " ",
                    "\n",
                    "\r\n",
                    "#",
                    "NaN",
                    "+Inf",
                    "0.5",
                    "-2",
                    "7",
                    "model_name",
                ]
            ),
            st.text(max_size=4),
        ),
        max_size=40,
    )
)
def test_any_text_reads_as_a_finite_load(pieces: list[str]) -> None:
    text = "".join(pieces)
    load = parse_engine_metrics(text, RuntimeKind.VLLM)
    for value in (
        load.running,
        load.waiting,
        load.kv_cache_usage,
        load.generated_tokens,
        load.prompt_tokens,
    ):
        assert value is None or (math.isfinite(value) and value >= 0)
    assert load.kv_cache_usage is None or load.kv_cache_usage <= 1.0
    assert parse_engine_metrics(text.replace("\n", "\r\n"), RuntimeKind.VLLM) == load
