"""The TOML loader: the DESIGN §4 example, every kind of malformed file, runtime inference."""

from __future__ import annotations

import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from rakka_inference.core.config import (
    LoadedConfig,
    load_config,
    load_config_report,
    parse_config,
    parse_config_report,
)
from rakka_inference.core.config_convert import Converter, Issues
from rakka_inference.core.config_lines import LineLocator, format_path
from rakka_inference.core.deployment import ClusterConfig, Config
from rakka_inference.core.errors import ConfigError, ConfigIssue
from rakka_inference.core.policies import (
    Budget,
    BudgetAction,
    CapacityPolicy,
    CircuitBreakerConfig,
    Jitter,
    ModelPrice,
    RateLimits,
    RetryPolicy,
    Serving,
    Timeouts,
)
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    GeminiConfig,
    LiteLLMConfig,
    LlamaCppConfig,
    OpenAIConfig,
    RuntimeKind,
    SentenceTransformersConfig,
    TransformersConfig,
    VllmConfig,
)
from rakka_inference.core.secrets import InlineSecretWarning, SecretRef

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rakka.toml"
CONFIGS = Path(__file__).resolve().parent / "configs"


def toml(text: str) -> str:
    """Dedented, so that line 1 is the first line written in the test."""
    return textwrap.dedent(text).lstrip("\n")


def issues_of(text: str, environ: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        parse_config(toml(text), "test.toml", {} if environ is None else environ)
    assert str(info.value).startswith(f"{len(info.value.issues)} configuration error")
    return list(info.value.issues)


def only_issue(text: str, environ: dict[str, str] | None = None) -> ConfigIssue:
    issues = issues_of(text, environ)
    assert len(issues) == 1, issues
    return issues[0]


def assert_issue(issue: ConfigIssue, path: str, line: int | None, fragment: str) -> None:
    assert issue.source == "test.toml"
    assert (issue.path, issue.line) == (path, line), issue
    assert fragment in issue.message, issue


# --------------------------------------------------------------------------- the example


@pytest.fixture(scope="module")
def example() -> LoadedConfig:
    return load_config_report(EXAMPLE, environ={})


def test_example_cluster(example: LoadedConfig) -> None:
    assert example.source == str(EXAMPLE)
    assert example.config.cluster == ClusterConfig(
        name="prod",
        bind="127.0.0.1:8080",
        client_api_keys=(SecretRef.from_env("RAKKA_CLIENT_KEY"),),
        admin_api_key=SecretRef.from_file("/run/secrets/rakka-admin"),
    )
    assert (example.config.cluster.host, example.config.cluster.port) == ("127.0.0.1", 8080)
    assert [d.name for d in example.config.deployments] == [
        "gpt-4o",
        "claude-sonnet-4",
        "gpt-4o-azure",
        "gemini-pro",
        "litellm-mixtral",
        "gpt-oss-20b",
        "qwen-small",
    ]


def test_example_openai_deployment_matches_design(example: LoadedConfig) -> None:
    gpt = example.config.deployment("gpt-4o")
    assert (gpt.model, gpt.runtime, gpt.replicas) == ("gpt-4o", RuntimeKind.OPENAI, 2)
    assert gpt.fallbacks == ("claude-sonnet-4",)
    assert (gpt.idempotent, gpt.aliases, gpt.pricing) == (True, (), None)
    settings = gpt.runtime_config
    assert isinstance(settings, OpenAIConfig)
    assert settings.endpoint == "https://api.openai.com/v1"
    assert settings.api_key == SecretRef.from_env("OPENAI_API_KEY")
    assert (settings.variant, settings.organization, settings.http2) == ("openai", None, False)
    assert settings.rate_limits == RateLimits(
        requests_per_minute=10_000, tokens_per_minute=10_000_000
    )
    assert settings.rate_limits.concurrent_requests is None
    assert settings.retry == RetryPolicy(max_retries=3)
    assert settings.retry.jitter is Jitter.EQUAL
    assert settings.circuit_breaker == CircuitBreakerConfig(
        failure_threshold=10, open_duration_ms=30_000
    )
    assert settings.circuit_breaker.max_open_duration_ms == 300_000
    assert settings.timeouts == Timeouts()
    assert gpt.serving == Serving(max_concurrent=50, on_capacity_exhausted=CapacityPolicy.QUEUE)
    assert (gpt.serving.queue_capacity, gpt.serving.queue_timeout_ms) == (1024, 30_000)
    assert gpt.budget == Budget(max_spend_per_hour=100.0, on_exceeded=BudgetAction.REJECT)
    assert gpt.budget.max_spend_per_day is None


def test_example_anthropic_is_inferred_from_a_configured_key(example: LoadedConfig) -> None:
    claude = example.config.deployment("claude-sonnet-4")
    assert claude.runtime is RuntimeKind.ANTHROPIC  # no ANTHROPIC_API_KEY in the environment
    assert example.inferred_runtimes == frozenset({"claude-sonnet-4"})
    assert example.default_credentials == frozenset()
    assert claude.aliases == ("sonnet",)
    settings = claude.runtime_config
    assert isinstance(settings, AnthropicConfig)
    assert (settings.max_tokens_default, settings.anthropic_version) == (8192, "2023-06-01")
    assert settings.timeouts == Timeouts(request_timeout_ms=45_000, read_timeout_ms=15_000)
    assert settings.timeouts.first_byte_ms(streaming=True) == 45_000
    assert claude.pricing == ModelPrice(
        input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3
    )


def test_example_azure(example: LoadedConfig) -> None:
    azure = example.config.deployment("gpt-4o-azure")
    assert (azure.runtime, azure.idempotent) == (RuntimeKind.OPENAI, False)
    settings = azure.runtime_config
    assert isinstance(settings, OpenAIConfig)
    assert (settings.variant, settings.resource, settings.deployment, settings.api_version) == (
        "azure",
        "contoso-eastus",
        "gpt-4o-prod",
        "2024-10-21",
    )
    assert settings.api_key == SecretRef.from_env("AZURE_OPENAI_API_KEY")
    # A partial [retry] table keeps the other defaults.
    assert settings.retry == RetryPolicy(max_retries=2, jitter=Jitter.FULL)
    assert azure.serving.on_capacity_exhausted is CapacityPolicy.REJECT


def test_example_vertex_credentials_resolve_next_to_the_file(example: LoadedConfig) -> None:
    gemini = example.config.deployment("gemini-pro")
    assert gemini.runtime is RuntimeKind.GEMINI
    assert gemini.upstream_model == "gemini-2.5-pro"
    settings = gemini.runtime_config
    assert isinstance(settings, GeminiConfig)
    assert (settings.variant, settings.project, settings.region) == (
        "vertex",
        "acme-ml",
        "us-central1",
    )
    assert settings.credentials == SecretRef.from_file(EXAMPLE.parent / "sa.json")
    assert settings.api_key is None  # Vertex uses the service account, not an API key
    assert gemini.budget == Budget(max_spend_per_day=500.0, on_exceeded=BudgetAction.THROTTLE)


def test_example_litellm_and_vllm(example: LoadedConfig) -> None:
    litellm = example.config.deployment("litellm-mixtral").runtime_config
    assert isinstance(litellm, LiteLLMConfig)
    assert litellm.endpoint == "http://litellm.internal:4000"
    assert litellm.retry.max_retries == 1  # LiteLLM's own default: the proxy retries itself
    assert (dict(litellm.metadata), litellm.tags) == ({"team": "search"}, ("team-search",))
    local = example.config.deployment("gpt-oss-20b")
    assert (local.runtime, local.is_remote) == (RuntimeKind.VLLM, False)
    assert local.runtime_config == VllmConfig(
        tensor_parallel_size=2,
        gpu_memory_utilization=0.85,
        max_model_len=32768,
        extra_args=("--enable-prefix-caching",),
    )
    gguf = example.config.deployment("qwen-small")
    assert gguf.runtime_config == LlamaCppConfig(ctx_size=8192, n_gpu_layers=99)
    assert gguf.fallbacks == ("gpt-4o",)


def test_load_config_returns_the_config(example: LoadedConfig) -> None:
    assert load_config(EXAMPLE, environ={}) == example.config


def test_an_empty_configuration_is_valid() -> None:
    assert parse_config("") == Config()
    assert parse_config("[cluster]\n") == Config()
    assert parse_config("deployment = []\n") == Config()


def test_defaults_of_a_minimal_deployment() -> None:
    config = parse_config(
        toml(
            """
            [[deployment]]
            name = "embed"
            model = "all-MiniLM-L6-v2"
            runtime = "sentence_transformers"
            [[deployment]]
            name = "tiny"
            model = "distilgpt2"
            runtime = "transformers"
            [deployment.runtime_config]
            device = "cuda:0"
            """
        ),
        environ={},
    )
    embed, tiny = config.deployments
    assert embed.runtime_config == SentenceTransformersConfig()
    assert (embed.replicas, embed.serving, embed.budget) == (1, Serving(), None)
    assert tiny.runtime_config == TransformersConfig(device="cuda:0")


def test_integers_are_accepted_for_floats() -> None:
    config = parse_config(
        toml(
            """
            [[deployment]]
            name = "m"
            model = "m"
            [deployment.budget]
            max_spend_per_hour = 100
            """
        ),
        environ={},
    )
    budget = config.deployments[0].budget
    assert budget is not None
    assert budget.max_spend_per_hour == 100.0
    assert isinstance(budget.max_spend_per_hour, float)


def test_ipv6_bind_is_accepted() -> None:
    cluster = parse_config('[cluster]\nbind = "[::1]:9000"\n').cluster
    assert (cluster.host, cluster.port) == ("::1", 9000)


# --------------------------------------------------------------------------- malformed files


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    issue = only_issue(
        """
        [cluster]
        name = "x"
        [[deployments]]
        name = "a"
        """
    )
    assert_issue(issue, "deployments", 3, "unknown key 'deployments'; did you mean 'deployment'?")


def test_typo_in_a_nested_key_suggests_the_field() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "gpt-4o"
        model = "gpt-4o"
        runtime = "openai"
        [deployment.runtime_config.retry]
        max_retires = 5
        """
    )
    assert_issue(
        issue,
        "deployment[0].runtime_config.retry.max_retires",
        6,
        "unknown key 'max_retires'; did you mean 'max_retries'?",
    )


def test_unknown_key_without_a_close_match_has_no_suggestion() -> None:
    issue = only_issue("[cluster]\nzzz = 1\n")
    assert_issue(issue, "cluster.zzz", 2, "unknown key 'zzz'")
    assert "did you mean" not in issue.message


def test_a_string_where_an_integer_belongs() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "m"
        replicas = "two"
        """
    )
    assert_issue(issue, "deployment[0].replicas", 4, "expected an integer, got a string")
    assert "two" not in issue.message  # values are not echoed: they may be secrets


def test_a_boolean_is_not_an_integer() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "m"
        [deployment.serving]
        max_concurrent = true
        """
    )
    assert_issue(
        issue, "deployment[0].serving.max_concurrent", 5, "expected an integer, got a boolean"
    )


def test_negative_replicas() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "m"
        replicas = -1
        """
    )
    assert_issue(issue, "deployment[0].replicas", 4, "must be in 1..256, got -1")


@pytest.mark.parametrize(
    ("field", "value", "line", "message"),
    [
        ("replicas", 257, 4, "must be in 1..256, got 257"),
        ("replicas", 100_000_000, 4, "must be in 1..256, got 100000000"),
        ("serving.max_concurrent", 4097, 5, "must be in 1..4096, got 4097"),
    ],
)
def test_counts_that_cost_memory_have_an_upper_bound(
    field: str, value: int, line: int, message: str
) -> None:
    table, _, name = field.rpartition(".")
    body = f"[deployment.{table}]\n{name} = {value}" if table else f"{name} = {value}"
    issue = only_issue(f"""
        [[deployment]]
        name = "a"
        model = "m"
        {body}
        """)
    assert_issue(issue, f"deployment[0].{field}", line, message)


def test_unknown_runtime_lists_the_allowed_ones() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "gpt-4o"
        runtime = "opnai"
        """
    )
    assert_issue(issue, "deployment[0].runtime", 4, "'opnai' is not one of 'openai', 'anthropic'")
    assert "'sentence_transformers'" in issue.message
    assert issue.message.endswith("did you mean 'openai'?")


def test_unknown_jitter_lists_the_allowed_values() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "m"
        runtime = "anthropic"
        [deployment.runtime_config]
        api_key = { from_env = "K" }
        retry = { jitter = "half" }
        """
    )
    assert_issue(
        issue,
        "deployment[0].runtime_config.retry.jitter",
        7,
        "'half' is not one of 'none', 'full', 'equal'",
    )


def test_a_choice_must_be_a_string() -> None:
    issue = only_issue('[[deployment]]\nname = "a"\nmodel = "m"\nruntime = 3\n')
    assert_issue(issue, "deployment[0].runtime", 4, "expected one of 'openai'")
    assert issue.message.endswith("got an integer")


def test_duplicate_deployment_names() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "m"

        [[deployment]]
        name = "a"
        model = "m2"
        """
    )
    assert_issue(issue, "deployment[1].name", 6, "duplicate deployment name 'a'")
    assert "deployment[0]" in issue.message


def test_fallback_to_a_missing_deployment() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "gpt-4o"
        model = "m"
        fallbacks = ["gpt-4"]
        """
    )
    assert_issue(
        issue,
        "deployment[0].fallbacks[0]",
        4,
        "fallback 'gpt-4' is not a deployment; did you mean 'gpt-4o'?",
    )


def test_fallback_to_itself() -> None:
    issue = only_issue('[[deployment]]\nname = "a"\nmodel = "m"\nfallbacks = ["a"]\n')
    assert_issue(issue, "deployment[0].fallbacks[0]", 4, "cannot fall back to itself")


def test_a_later_deployment_may_be_a_fallback() -> None:
    config = parse_config(
        toml(
            """
            [[deployment]]
            name = "a"
            model = "m"
            fallbacks = ["b"]
            [deployment.serving]
            on_capacity_exhausted = "fallback"
            [[deployment]]
            name = "b"
            model = "m"
            """
        ),
        environ={},
    )
    assert config.deployments[0].fallbacks == ("b",)


def test_alias_clashing_with_a_deployment_name() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "m"
        aliases = ["x", "b"]
        [[deployment]]
        name = "b"
        model = "m"
        """
    )
    assert_issue(issue, "deployment[0].aliases[1]", 4, "alias 'b' clashes with the deployment")


def test_alias_used_twice() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "m"
        aliases = ["fast"]
        [[deployment]]
        name = "b"
        model = "m"
        aliases = ["fast"]
        """
    )
    assert_issue(issue, "deployment[1].aliases[0]", 8, "alias 'fast' is already used by 'a'")


def test_empty_names() -> None:
    issues = issues_of(
        """
        [[deployment]]
        name = " "
        model = ""
        aliases = [""]
        """
    )
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("deployment[0].name", 2, "must not be empty"),
        ("deployment[0].model", 3, "must not be empty"),
        ("deployment[0].aliases", 4, "must not contain empty names"),
    ]


def test_missing_required_keys_point_at_the_table() -> None:
    issues = issues_of(
        """
        [cluster]
        name = "x"

        [[deployment]]
        replicas = 1
        """
    )
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("deployment[0].name", 4, "is required"),
        ("deployment[0].model", 4, "is required"),
    ]


def test_azure_without_resource() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "azure"
        model = "gpt-4o"
        runtime = "openai"
        [deployment.runtime_config]
        variant = "azure"
        deployment = "prod"
        api_version = "2024-10-21"
        """
    )
    assert_issue(
        issue, "deployment[0].runtime_config.resource", 5, "is required when variant = 'azure'"
    )


def test_azure_fields_without_the_azure_variant() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "a"
        model = "gpt-4o"
        runtime = "openai"
        [deployment.runtime_config]
        project = "proj_1"
        api_version = "2024-10-21"
        """
    )
    assert_issue(
        issue, "deployment[0].runtime_config.api_version", 7, "applies only to variant = 'azure'"
    )


def test_azure_with_an_entra_token_gets_no_default_key() -> None:
    loaded = parse_config_report(
        toml(
            """
            [[deployment]]
            name = "azure"
            model = "gpt-4o"
            [deployment.runtime_config]
            variant = "azure"
            resource = "r"
            deployment = "d"
            api_version = "v"
            azure_ad_token = { from_env = "AZURE_TOKEN" }
            """
        ),
        environ={},
    )
    settings = loaded.config.deployments[0].runtime_config
    assert isinstance(settings, OpenAIConfig)
    assert loaded.config.deployments[0].runtime is RuntimeKind.OPENAI  # token counts
    assert (settings.api_key, settings.azure_ad_token) == (None, SecretRef.from_env("AZURE_TOKEN"))
    assert loaded.default_credentials == frozenset()


def test_vertex_without_credentials() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "g"
        model = "gemini-2.5-pro"
        runtime = "gemini"
        [deployment.runtime_config]
        variant = "vertex"
        project = "p"
        region = "us-central1"
        """
    )
    assert_issue(
        issue,
        "deployment[0].runtime_config.credentials",
        5,
        "is required when variant = 'vertex'",
    )


def test_variant_values_depend_on_the_runtime() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "g"
        model = "gpt-4o"
        runtime = "openai"
        [deployment.runtime_config]
        variant = "vertex"
        """
    )
    assert_issue(
        issue, "deployment[0].runtime_config.variant", 6, "'vertex' is not one of 'openai', 'azure'"
    )


def test_litellm_needs_an_endpoint() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "l"
        model = "litellm/mixtral"
        runtime = "litellm"
        """
    )
    assert_issue(issue, "deployment[0].runtime_config.endpoint", 1, "URL of the LiteLLM proxy")


def test_endpoint_must_be_an_http_url() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "l"
        model = "m"
        runtime = "litellm"
        runtime_config.endpoint = "ftp://user:pw@proxy"
        """
    )
    assert_issue(issue, "deployment[0].runtime_config.endpoint", 5, "http:// or https:// URL")
    assert "pw" not in issue.message


@pytest.mark.parametrize(
    ("secret", "path", "fragment"),
    [
        ('{ env = "K" }', "api_key", "unknown secret source 'env'; did you mean 'from_env'?"),
        ('{ vault = "K" }', "api_key", "unknown secret source 'vault'"),
        ('{ from_env = "" }', "api_key.from_env", "expected a non-empty string"),
        ("{ from_file = 1 }", "api_key.from_file", "expected a non-empty string"),
        (
            '{ from_env = "K", from_file = "f" }',
            "api_key",
            "got a table with keys 'from_env', 'from_file'",
        ),
        ("{}", "api_key", "got a table with keys (none)"),
        ("42", "api_key", 'expected a secret reference: { from_env = "NAME" }'),
        ('""', "api_key", "got an empty string"),
    ],
)
def test_bad_secret_reference_shapes(secret: str, path: str, fragment: str) -> None:
    issue = only_issue(
        f"""
        [[deployment]]
        name = "a"
        model = "claude-sonnet-4"
        runtime = "anthropic"
        [deployment.runtime_config]
        api_key = {secret}
        """
    )
    assert_issue(issue, f"deployment[0].runtime_config.{path}", 6, fragment)


@pytest.mark.parametrize(
    ("bind", "fragment"),
    [
        ("localhost", "must be host:port"),
        (":8080", "must be host:port"),
        ("host:http", "must be host:port"),
        ("127.0.0.1:99999", "port must be in 1..65535, got 99999"),
        ("127.0.0.1:0", "port must be in 1..65535, got 0"),
        ("::1:8080", "an IPv6 address must be in brackets"),
        ("[zz]:8080", "[zz] is not an IPv6 address"),
    ],
)
def test_bad_bind(bind: str, fragment: str) -> None:
    issue = only_issue(f'[cluster]\nname = "c"\nbind = "{bind}"\n')
    assert_issue(issue, "cluster.bind", 3, fragment)


def test_toml_syntax_error_carries_its_line() -> None:
    issue = only_issue(
        """
        [cluster]
        name = "x"
        bind = 127.0.0.1:8080
        """
    )
    assert_issue(issue, "", 3, "TOML syntax error: Expected newline")
    assert issue.message.endswith("(column 13)")
    assert str(issue).startswith("test.toml:3: TOML syntax error")


def test_toml_syntax_error_at_the_end_of_the_document() -> None:
    issue = only_issue('[cluster]\nname = "x"\nbind = [\n')
    assert_issue(issue, "", 3, "(at end of document)")


def test_several_errors_are_reported_at_once() -> None:
    issues = issues_of(
        """
        [cluster]
        bind = "nowhere"
        nmae = "prod"

        [[deployment]]
        name = "gpt-4o"
        model = "gpt-4o"
        runtime = "openai"
        replicas = 0
        fallbacks = ["claude"]
        [deployment.runtime_config.retry]
        max_retries = -1
        backoff_multiplier = 0.5
        jitter = "random"
        [deployment.runtime_config.rate_limits]
        requests_per_minute = 0
        [deployment.runtime_config.circuit_breaker]
        failure_rate_threshold = 1.5
        [deployment.budget]
        on_exceeded = "warn"

        [[deployment]]
        name = "gpt-4o"
        model = "m"
        unknown = 1
        """
    )
    assert [(i.line, i.path) for i in issues] == [
        (2, "cluster.bind"),
        (3, "cluster.nmae"),
        (9, "deployment[0].replicas"),
        (10, "deployment[0].fallbacks[0]"),
        (12, "deployment[0].runtime_config.retry.max_retries"),
        (13, "deployment[0].runtime_config.retry.backoff_multiplier"),
        (14, "deployment[0].runtime_config.retry.jitter"),
        (16, "deployment[0].runtime_config.rate_limits.requests_per_minute"),
        (18, "deployment[0].runtime_config.circuit_breaker.failure_rate_threshold"),
        (19, "deployment[0].budget"),
        (23, "deployment[1].name"),
        (25, "deployment[1].unknown"),
    ]
    messages = [i.message for i in issues]
    assert "did you mean 'name'?" in messages[1]
    assert messages[5] == "must be >= 1, got 0.5"
    assert messages[7] == "must be > 0, got 0"
    assert messages[8] == "must be in (0, 1], got 1.5"
    assert messages[9] == "set max_spend_per_hour and/or max_spend_per_day"


@pytest.mark.parametrize(
    ("table", "line", "path", "fragment"),
    [
        (
            "[deployment.pricing]\ninput_per_mtok = -1.0\noutput_per_mtok = 2.0",
            5,
            "pricing.input_per_mtok",
            "must be >= 0",
        ),
        ("[deployment.pricing]\ninput_per_mtok = 1.0", 4, "pricing.output_per_mtok", "is required"),
        (
            "[deployment.budget]\nmax_spend_per_day = -5.0",
            5,
            "budget.max_spend_per_day",
            "must be > 0",
        ),
        (
            "[deployment.budget]\nmax_spend_per_day = inf",
            5,
            "budget.max_spend_per_day",
            "must be a finite number",
        ),
        ("[deployment.serving]\nqueue_capacity = 0", 5, "serving.queue_capacity", "must be > 0"),
        (
            '[deployment.serving]\non_capacity_exhausted = "fallback"',
            5,
            "serving.on_capacity_exhausted",
            "needs a non-empty fallbacks list",
        ),
        (
            "[deployment.runtime_config.timeouts]\nread_timeout_ms = 0",
            5,
            "runtime_config.timeouts.read_timeout_ms",
            "must be > 0",
        ),
        (
            "[deployment.runtime_config.retry]\ninitial_backoff_ms = 5000\nmax_backoff_ms = 1000",
            6,
            "runtime_config.retry.max_backoff_ms",
            "must be >= initial_backoff_ms (5000)",
        ),
        (
            "[deployment.runtime_config.circuit_breaker]\n"
            "open_duration_ms = 60000\nmax_open_duration_ms = 1000",
            6,
            "runtime_config.circuit_breaker.max_open_duration_ms",
            "must be >= open_duration_ms",
        ),
        (
            "[deployment.runtime_config]\nmax_tokens_default = 0",
            5,
            "runtime_config.max_tokens_default",
            "must be > 0",
        ),
        (
            '[deployment.runtime_config]\norganization = "org"',
            5,
            "runtime_config.organization",
            "unknown key 'organization' for runtime 'anthropic'",
        ),
        (
            "[deployment.runtime_config]\nrate_limits = 5",
            5,
            "runtime_config.rate_limits",
            "expected a table, got an integer",
        ),
        ('runtime_config = "x"', 4, "runtime_config", "expected a table, got a string"),
        ('aliases = "fast"', 4, "aliases", "expected an array, got a string"),
        ("aliases = [1]", 4, "aliases[0]", "expected a string, got an integer"),
        ("idempotent = 1", 4, "idempotent", "expected a boolean, got an integer"),
        ("serving = []", 4, "serving", "expected a table, got an array"),
        (
            "[deployment.runtime_config]\nhttp2 = 1979-05-27",
            5,
            "runtime_config.http2",
            "got a date/time",
        ),
        ("[deployment.runtime_config]\nhttp2 = 1.5", 5, "runtime_config.http2", "got a float"),
    ],
)
def test_field_rules(table: str, line: int, path: str, fragment: str) -> None:
    head = '[[deployment]]\nname = "a"\nmodel = "claude-sonnet-4"\n'
    issues = issues_of(head + table + "\n", {"ANTHROPIC_API_KEY": "k"})
    assert len(issues) == 1, issues
    assert_issue(issues[0], f"deployment[0].{path}", line, fragment)


def test_litellm_metadata_must_map_strings() -> None:
    issues = issues_of(
        """
        [[deployment]]
        name = "l"
        model = "litellm/x"
        [deployment.runtime_config]
        endpoint = "http://proxy:4000"
        metadata = { team = 1, owner = "me" }
        tags = "t"
        """,
        {"LITELLM_API_KEY": "k"},
    )
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("deployment[0].runtime_config.metadata.team", 6, "expected a string, got an integer"),
        ("deployment[0].runtime_config.tags", 7, "expected an array, got a string"),
    ]
    issue = only_issue(
        '[[deployment]]\nname = "l"\nmodel = "litellm/x"\n'
        '[deployment.runtime_config]\nendpoint = "http://p"\nmetadata = 5\n',
        {"LITELLM_API_KEY": "k"},
    )
    assert_issue(issue, "deployment[0].runtime_config.metadata", 6, "expected a table")


def test_deployment_must_be_an_array_of_tables() -> None:
    issue = only_issue('[deployment]\nname = "a"\nmodel = "m"\n')
    assert_issue(
        issue, "deployment", 1, "expected an array of tables ([[deployment]]), got a table"
    )
    issue = only_issue("deployment = [1]\n")
    assert_issue(issue, "deployment[0]", 1, "expected a table, got an integer")


def test_cluster_must_be_a_table() -> None:
    assert_issue(only_issue("cluster = 5\n"), "cluster", 1, "expected a table, got an integer")


def test_local_runtime_rejects_remote_settings() -> None:
    issues = issues_of(
        """
        [[deployment]]
        name = "local"
        model = "meta-llama/Llama-3.1-8B"
        runtime = "vllm"
        [deployment.runtime_config]
        endpoint = "http://localhost:8000"
        tensor_parallel_size = "2"
        """
    )
    assert [(i.path, i.line) for i in issues] == [
        ("deployment[0].runtime_config.endpoint", 6),
        ("deployment[0].runtime_config.tensor_parallel_size", 7),
    ]
    assert issues[0].message == "'endpoint' is a remote-runtime setting, but the runtime is 'vllm'"
    assert issues[1].message == "expected an integer, got a string"


def test_remote_settings_on_an_inferred_local_runtime_explain_the_inference() -> None:
    issues = issues_of(
        """
        [[deployment]]
        name = "gpt"
        model = "gpt-4o"
        [deployment.runtime_config]
        endpoint = "https://api.openai.com/v1"
        tensor_parallel_size = "2"
        """
    )
    assert [(i.path, i.line) for i in issues] == [
        ("deployment[0].runtime_config.endpoint", 5),
        ("deployment[0].runtime_config.tensor_parallel_size", 6),
    ]
    assert "inferred from model 'gpt-4o' because no openai credentials" in issues[0].message
    assert "set OPENAI_API_KEY or runtime_config.api_key" in issues[0].message


def test_remote_settings_on_a_local_model_name() -> None:
    issue = only_issue(
        '[[deployment]]\nname = "l"\nmodel = "llama"\n[deployment.runtime_config]\nhttp2 = true\n'
    )
    assert issue.message == "'http2' is a remote-runtime setting, but the runtime is 'vllm'"


def test_local_runtime_checks_its_own_fields() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "l"
        model = "llama"
        [deployment.runtime_config]
        gpu_memory_utilization = 1.2
        """
    )
    assert_issue(
        issue, "deployment[0].runtime_config.gpu_memory_utilization", 5, "must be in (0, 1]"
    )


def test_issues_are_sorted_by_line() -> None:
    issues = issues_of(
        '[[deployment]]\nname = "a"\nmodel = "m"\nreplicas = 0\n[cluster]\nbind = "x"\n'
    )
    assert [i.line for i in issues] == [4, 6]


# --------------------------------------------------------------------------- files


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/rakka.toml")
    (issue,) = info.value.issues
    assert issue == ConfigIssue(
        "/nonexistent/rakka.toml", "", "cannot read the file: No such file or directory"
    )


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_issues_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rakka.toml"
    path.write_text('[cluster]\nbind = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value.issues[0]).startswith(f"{path}:2: cluster.bind: must be host:port")


def test_relative_from_file_resolves_against_the_config_directory(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "keys").mkdir(parents=True)
    path = conf / "rakka.toml"
    path.write_text(
        toml(
            """
            [cluster]
            admin_api_key = { from_file = "keys/admin" }
            client_api_keys = [{ from_file = "/abs/client" }, { from_env = "CLIENT_KEY" }]
            """
        )
    )
    cluster = load_config(path, environ={}).cluster
    assert cluster.admin_api_key == SecretRef.from_file(conf / "keys" / "admin")
    assert cluster.client_api_keys == (
        SecretRef.from_file("/abs/client"),
        SecretRef.from_env("CLIENT_KEY"),
    )
    # Resolved when used, not when loaded: the file may appear (or change) later.
    (conf / "keys" / "admin").write_text("first\n")
    assert cluster.admin_api_key.resolve().expose() == "first"
    (conf / "keys" / "admin").write_text("second\n")
    assert cluster.admin_api_key.resolve().expose() == "second"


def test_relative_from_file_in_text_resolves_against_base_dir_or_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = '[cluster]\nadmin_api_key = { from_file = "admin.key" }\n'
    config = parse_config(text, base_dir=tmp_path / "etc")
    assert config.cluster.admin_api_key == SecretRef.from_file(tmp_path / "etc" / "admin.key")
    monkeypatch.chdir(tmp_path)
    config = parse_config(text)
    assert config.cluster.admin_api_key == SecretRef.from_file(tmp_path / "admin.key")


def test_example_configs_directory() -> None:
    """Each file under configs/ names, in its first line, the issues it must raise."""
    for path in sorted(CONFIGS.glob("*.toml")):
        expected = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        got = "; ".join(f"{i.line} {i.path}" for i in info.value.issues)
        assert got == expected, path.name


# --------------------------------------------------------------------------- inline secrets


def test_inline_secret_warns_with_its_location() -> None:
    text = toml(
        """
        [[deployment]]
        name = "a"
        model = "claude-sonnet-4"
        [deployment.runtime_config]
        api_key = "sk-ant-inline-123"
        """
    )
    with pytest.warns(
        InlineSecretWarning, match=r"deployment\[0\]\.runtime_config\.api_key"
    ) as rec:
        loaded = parse_config_report(text, "inline.toml", {})
    (warning,) = rec.list
    assert (warning.filename, warning.lineno) == ("inline.toml", 5)
    assert "sk-ant-inline-123" not in str(warning.message)
    deployment = loaded.config.deployments[0]
    assert deployment.runtime is RuntimeKind.ANTHROPIC  # an inline key is a configured key
    settings = deployment.runtime_config
    assert isinstance(settings, AnthropicConfig)
    assert settings.api_key is not None
    assert settings.api_key.source == "inline"
    assert settings.api_key.resolve().expose() == "sk-ant-inline-123"
    assert "sk-ant-inline-123" not in repr(loaded)


def test_inline_client_keys_warn_once_each() -> None:
    with pytest.warns(InlineSecretWarning) as rec:
        config = parse_config('[cluster]\nclient_api_keys = ["k1", "k2"]\n')
    assert len(rec.list) == 2
    assert [ref.source for ref in config.cluster.client_api_keys] == ["inline", "inline"]
    assert "k1" not in repr(config)


# --------------------------------------------------------------------------- runtime inference


GPT_OSS = '[[deployment]]\nname = "oss"\nmodel = "gpt-oss-20b"\n'


def test_gpt_oss_without_an_openai_key_is_local() -> None:
    loaded = parse_config_report(GPT_OSS, environ={})
    deployment = loaded.config.deployments[0]
    assert deployment.runtime is RuntimeKind.VLLM
    assert deployment.runtime_config == VllmConfig()
    assert loaded.inferred_runtimes == frozenset({"oss"})
    assert loaded.default_credentials == frozenset()


def test_gpt_oss_with_an_openai_key_in_the_environment_is_openai() -> None:
    loaded = parse_config_report(GPT_OSS, environ={"OPENAI_API_KEY": "sk-test"})
    deployment = loaded.config.deployments[0]
    assert deployment.runtime is RuntimeKind.OPENAI
    settings = deployment.runtime_config
    assert isinstance(settings, OpenAIConfig)
    # The key source is made explicit; the value is not read at load time.
    assert settings.api_key == SecretRef.from_env("OPENAI_API_KEY")
    assert loaded.default_credentials == frozenset({"oss"})
    assert "sk-test" not in repr(loaded)


def test_an_empty_environment_variable_is_not_a_credential() -> None:
    config = parse_config(GPT_OSS, environ={"OPENAI_API_KEY": ""})
    assert config.deployments[0].runtime is RuntimeKind.VLLM


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert parse_config(GPT_OSS).deployments[0].runtime is RuntimeKind.OPENAI
    monkeypatch.delenv("OPENAI_API_KEY")
    assert parse_config(GPT_OSS).deployments[0].runtime is RuntimeKind.VLLM


@pytest.mark.parametrize(
    ("model", "runtime_config", "environ", "runtime", "key_env"),
    [
        (
            "claude-sonnet-4",
            "",
            {"ANTHROPIC_API_KEY": "k"},
            RuntimeKind.ANTHROPIC,
            "ANTHROPIC_API_KEY",
        ),
        ("claude-sonnet-4", "", {"OPENAI_API_KEY": "k"}, RuntimeKind.VLLM, None),
        ("gemini-2.5-flash", "", {"GEMINI_API_KEY": "k"}, RuntimeKind.GEMINI, "GEMINI_API_KEY"),
        (
            "google/gemini-2.0-flash",
            "",
            {"GEMINI_API_KEY": "k"},
            RuntimeKind.GEMINI,
            "GEMINI_API_KEY",
        ),
        ("chatgpt-4o-latest", "", {}, RuntimeKind.VLLM, None),
        (
            "gemini-2.5-flash",
            'variant = "vertex"\nproject = "p"\nregion = "r"\ncredentials = { from_file = "/sa" }',
            {},
            RuntimeKind.GEMINI,
            None,
        ),
        (
            "gpt-4o",
            'variant = "azure"\nresource = "r"\ndeployment = "d"\napi_version = "v"',
            {"AZURE_OPENAI_API_KEY": "k"},
            RuntimeKind.OPENAI,
            "AZURE_OPENAI_API_KEY",
        ),
        (
            "litellm/mixtral",
            'endpoint = "http://proxy:4000"',
            {"LITELLM_API_KEY": "k"},
            RuntimeKind.LITELLM,
            "LITELLM_API_KEY",
        ),
        ("o3-mini", 'api_key = { from_env = "MY_KEY" }', {}, RuntimeKind.OPENAI, "MY_KEY"),
    ],
)
def test_runtime_inference(
    model: str,
    runtime_config: str,
    environ: dict[str, str],
    runtime: RuntimeKind,
    key_env: str | None,
) -> None:
    text = f'[[deployment]]\nname = "d"\nmodel = "{model}"\n[deployment.runtime_config]\n'
    loaded = parse_config_report(text + runtime_config + "\n", environ=environ)
    deployment = loaded.config.deployments[0]
    assert deployment.runtime is runtime
    assert loaded.inferred_runtimes == frozenset({"d"})
    api_key = getattr(deployment.runtime_config, "api_key", None)
    assert api_key == (None if key_env is None else SecretRef.from_env(key_env))


def test_an_explicit_runtime_needs_no_credentials() -> None:
    loaded = parse_config_report(
        '[[deployment]]\nname = "c"\nmodel = "claude-sonnet-4"\nruntime = "anthropic"\n',
        environ={},
    )
    settings = loaded.config.deployments[0].runtime_config
    assert isinstance(settings, AnthropicConfig)
    assert settings.api_key == SecretRef.from_env("ANTHROPIC_API_KEY")
    assert (loaded.inferred_runtimes, loaded.default_credentials) == (frozenset(), {"c"})


def test_no_inference_without_a_model() -> None:
    issue = only_issue('[[deployment]]\nname = "a"\n[deployment.runtime_config]\nzzz = 1\n')
    assert_issue(issue, "deployment[0].model", 1, "is required")


# --------------------------------------------------------------------------- the line locator


def test_format_path() -> None:
    assert format_path(("deployment", 1, "runtime_config", "retry")) == (
        "deployment[1].runtime_config.retry"
    )
    assert format_path(("deployment", 0, "runtime_config", "metadata", "a.b c")) == (
        'deployment[0].runtime_config.metadata."a.b c"'
    )
    assert format_path(()) == ""


def test_locator_skips_multiline_values_and_follows_dotted_and_quoted_keys() -> None:
    text = toml(
        '''
        # comment
        title = """
        [not.a.table]
        fake = 1
        """
        literal = \'\'\'
        [[neither]]
        \'\'\'
        escaped = """ends with quotes\\"""\"""
        after = 1
        items = [
          "a", # [comment]
          { x = "]" },
        ]
        "quoted.key" = 1
        dotted . key = 2
        [ a . "b.c" ]
        x = 'y'
        [[arr]]
        [arr.sub]
        k = 1
        [[arr]]
        [[arr.items]]
        n = 1
        [[arr.items]]
        n = 2
        [arr.sub]
        k = 3
        '''
    )
    locator = LineLocator(text)
    assert locator.line_of(("title",)) == 2
    assert locator.line_of(("not",)) is None
    assert locator.line_of(("fake",)) is None
    assert locator.line_of(("literal",)) == 6
    assert locator.line_of(("neither",)) is None
    assert locator.line_of(("escaped",)) == 9
    assert locator.line_of(("after",)) == 10
    assert locator.line_of(("items", 1, "x")) == 11
    assert locator.line_of(("quoted.key",)) == 15
    assert locator.line_of(("dotted", "key")) == 16
    assert locator.line_of(("dotted",)) == 16
    assert locator.line_of(("a", "b.c", "x")) == 18
    assert locator.line_of(("a", "b.c", "missing")) == 17
    assert locator.line_of(("arr", 0, "sub", "k")) == 21
    assert locator.line_of(("arr", 1)) == 22
    assert locator.line_of(("arr", 1, "items", 0, "n")) == 24
    assert locator.line_of(("arr", 1, "items", 1, "n")) == 26
    assert locator.line_of(("arr", 1, "sub", "k")) == 28
    assert locator.line_of(("arr", 2)) == 19  # no such element: the array's first header
    assert locator.line_of(("nowhere",)) is None


def test_locator_reads_escapes_in_quoted_keys() -> None:
    locator = LineLocator('"a\\"b" = 1\n"tab\\t" = 2\n"\\U0001F600" = 3\n')
    assert locator.line_of(('a"b',)) == 1
    assert locator.line_of(("tab\t",)) == 2
    assert locator.line_of(("\\U0001F600",)) == 3  # not a JSON escape: kept as written


def test_locator_tolerates_lines_it_cannot_read() -> None:
    locator = LineLocator('[]\nkey\n"unterminated = 1\n= 3\nx.\nk = "v"\n')
    assert locator.line_of(("k",)) == 6
    assert locator.line_of(("x",)) is None


def test_a_syntax_error_without_a_position(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(text: str) -> dict[str, object]:
        raise tomllib.TOMLDecodeError("something odd")

    monkeypatch.setattr(tomllib, "loads", fail)
    issue = only_issue("a = 1\n")
    assert (issue.line, issue.message) == (None, "TOML syntax error: something odd")


def test_the_converter_refuses_types_it_does_not_know() -> None:
    @dataclass
    class Odd:
        blob: bytes = b""

    issues = Issues("odd.toml", LineLocator(""))
    with pytest.raises(TypeError, match="cannot convert"):
        Converter(issues, Path.cwd()).record(Odd, {"blob": "x"}, ())


def test_gemini_vertex_fields_need_the_vertex_variant() -> None:
    issue = only_issue(
        """
        [[deployment]]
        name = "g"
        model = "gemini-2.5-pro"
        runtime = "gemini"
        runtime_config = { region = "us-central1" }
        """
    )
    assert_issue(
        issue,
        "deployment[0].runtime_config.region",
        5,
        "applies only to variant = 'vertex' (variant is 'ai_studio')",
    )


# --------------------------------------------------------------------------- the cluster


def test_workers_and_the_ray_backend() -> None:
    assert_issue(only_issue("[cluster]\nworkers = 0\n"), "cluster.workers", 2, "must be in 1..128")
    assert_issue(
        only_issue('[cluster]\nbackend = "ray"\nworkers = 2\n'),
        "cluster.workers",
        3,
        "applies only to backend = 'local'",
    )
    config = parse_config('[cluster]\nbackend = "ray"\nray_address = "ray://h:10001"\n', "t")
    assert config.cluster.backend == "ray"
    assert config.cluster.ray_address == "ray://h:10001"


def test_with_several_workers_no_local_replica_may_hold_gpus() -> None:
    text = """
        [cluster]
        workers = 4

        [[deployment]]
        name = "big"
        model = "org/m"
        runtime = "vllm"
        [deployment.runtime_config]
        tensor_parallel_size = 2

        [[deployment]]
        name = "gguf"
        model = "/m.gguf"
        runtime = "llamacpp"
        [deployment.runtime_config]
        n_gpu_layers = 20

        [[deployment]]
        name = "on-cpu"
        model = "org/m"
        runtime = "vllm"
        [deployment.runtime_config]
        gpus = 0

        [[deployment]]
        name = "cuda"
        model = "/m"
        runtime = "transformers"
        [deployment.runtime_config]
        device = "cuda:0"
        """
    issues = issues_of(text)
    assert [(i.path, i.line) for i in issues] == [
        ("deployment[0].runtime_config.tensor_parallel_size", 9),
        ("deployment[1].runtime_config.n_gpu_layers", 16),
        ("deployment[3].runtime_config.device", 30),
    ]
    assert "asks for 2 GPUs per replica, and with [cluster].workers = 4" in issues[0].message
    one_worker = text.replace("workers = 4", "workers = 1")
    assert len(parse_config(one_worker, "t").deployments) == 4


def test_on_ray_no_secret_may_be_inline() -> None:
    text = """
        [cluster]
        backend = "ray"
        admin_api_key = "inline-admin"
        client_api_keys = ["k1", { from_env = "CLIENT" }]

        [[deployment]]
        name = "a"
        model = "gpt-4o-mini"
        [deployment.runtime_config]
        api_key = "sk-inline"
        """
    with pytest.warns(InlineSecretWarning):
        issues = issues_of(text)
    assert [(i.path, i.line) for i in issues] == [
        ("cluster.admin_api_key", 3),
        ("cluster.client_api_keys[0]", 4),
        ("deployment[0].runtime_config.api_key", 10),
    ]
    assert all("kept in Ray's KV store" in i.message for i in issues)
    assert "sk-inline" not in str(issues)


# --------------------------------------------------------------------------- check_secrets

SECRETS = """
    [cluster]
    admin_api_key = { from_file = "admin.key" }
    client_api_keys = [{ from_env = "CLIENT" }]

    [[deployment]]
    name = "a"
    model = "gpt-4o-mini"
    runtime = "openai"

    [[deployment]]
    name = "local"
    model = "meta-llama/Llama-3.1-8B"
    runtime = "vllm"
    """


def test_secrets_are_not_read_unless_asked(tmp_path: Path) -> None:
    config = parse_config(textwrap.dedent(SECRETS), environ={}, base_dir=tmp_path)
    assert config.cluster.admin_api_key is not None


def test_check_secrets_reads_each_secret_read_at_start(tmp_path: Path) -> None:
    text = textwrap.dedent(SECRETS)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "conf.toml", environ={}, base_dir=tmp_path, check_secrets=True)
    assert [str(issue) for issue in caught.value.issues] == [
        f"conf.toml:3: cluster.admin_api_key: secret file:{tmp_path / 'admin.key'} cannot be "
        "read: No such file or directory",
        "conf.toml:4: cluster.client_api_keys[0]: secret env:CLIENT is not set",
        "conf.toml:6: deployment[0].runtime_config.api_key: secret env:OPENAI_API_KEY "
        "is not set (the default for runtime 'openai')",
    ]
    (tmp_path / "admin.key").write_text("  rk-admin-value\n")
    environ = {"CLIENT": "ck-value", "OPENAI_API_KEY": "sk-value"}
    config = parse_config(text, environ=environ, base_dir=tmp_path, check_secrets=True)
    assert [d.name for d in config.deployments] == ["a", "local"]


def test_check_secrets_reports_them_with_the_other_issues(tmp_path: Path) -> None:
    text = """
        [[deployment]]
        name = "a"
        model = "gpt-4o-mini"
        runtime = "openai"
        replicas = 0
        [deployment.runtime_config]
        api_key = { from_env = "A_KEY" }
        """
    with pytest.raises(ConfigError) as caught:
        parse_config(toml(text), environ={}, base_dir=tmp_path, check_secrets=True)
    assert [(i.path, i.line) for i in caught.value.issues] == [
        ("deployment[0].replicas", 5),
        ("deployment[0].runtime_config.api_key", 7),
    ]


def test_load_config_reads_a_relative_secret_file_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    file = tmp_path / "conf" / "rakka.toml"
    file.write_text('[cluster]\nadmin_api_key = { from_file = "keys/admin" }\n')
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={}, check_secrets=True)
    assert f"file:{tmp_path / 'conf' / 'keys' / 'admin'} cannot be read" in str(caught.value)
    (tmp_path / "conf" / "keys").mkdir()
    (tmp_path / "conf" / "keys" / "admin").write_bytes(b"\xc3\x28rk-admin")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={}, check_secrets=True)
    assert str(caught.value.issues[0]).endswith("is not UTF-8 text")
    assert "rk-admin" not in str(caught.value)
    (tmp_path / "conf" / "keys" / "admin").write_text("rk-admin")
    assert load_config_report(file, environ={}, check_secrets=True).config.cluster.admin_api_key


def test_cors_origins_are_origins() -> None:
    config = parse_config('[cluster]\ncors_origins = ["https://a.example:8443", "*"]\n', "t")
    assert config.cluster.cors_origins == ("https://a.example:8443", "*")
    issue = only_issue('[cluster]\ncors_origins = ["https://a.example/app"]\n')
    assert_issue(issue, "cluster.cors_origins", 2, "no path")
    issue = only_issue('[cluster]\ncors_origins = ["a.example"]\n')
    assert_issue(issue, "cluster.cors_origins", 2, "must be '*' or an origin")
