"""Load the TOML configuration (DESIGN §4) into the records of :mod:`.deployment`.

The pipeline, one small unit per step:

1. **Parse.** ``tomllib`` turns the text into tables. A syntax error becomes a
   :class:`ConfigError` carrying the line ``tomllib`` reports.
2. **Locate.** :class:`~.config_lines.LineLocator` scans the raw text once and maps each
   field path to the line of its key, so every issue names a file and a line.
3. **Convert.** :class:`~.config_convert.Converter` walks a record's ``dataclasses.fields``
   and type hints (int, float, bool, str, enums, ``Literal``, ``X | None``, tuples,
   mappings, nested records, secret references), fills defaults, rejects unknown keys
   (with a "did you mean" suggestion) and applies the field rules of
   :mod:`.config_rules` (positive counts, fractions, URLs, ``host:port``).
4. **Choose the runtime.** A deployment without ``runtime`` gets one from
   :func:`.deployment.infer_runtime`; its ``runtime_config`` is then converted as that
   runtime's record. A remote runtime without a key gets its standard environment variable,
   made explicit as ``SecretRef.from_env(...)``.
5. **Check.** Record checks (:func:`.config_rules.record_issues`: Azure, Vertex and
   LiteLLM needs, budgets, backoff order), checks across deployments
   (:func:`_check_references`: unique names and aliases, fallbacks that exist;
   :func:`.config_rules.shared_limit_conflicts`: deployments sharing a rate limiter set
   the same ``rate_limits``, their keys compared by fingerprint with ``check_secrets``,
   else by reference; and the :data:`~.config_rules.DeploymentCheck` functions
   the caller hands in, such as ``rakka validate``'s circuit breaker conflicts), and that
   enabled tracing has the OpenTelemetry packages it needs installed
   (:func:`missing_tracing_packages`).

No step stops at the first problem: every issue is collected and one ``ConfigError`` lists
them all.

Secrets are read when used, not kept. With ``check_secrets=True`` (``rakka validate``, and
``rakka serve`` before it starts anything) every secret the configuration would read at
start is resolved once and dropped: the cluster's client and admin keys and each remote
deployment's credential. One that cannot be read (a variable not set, a file missing,
unreadable, empty or not UTF-8) is an issue on its field's line, worded by
:meth:`~.secrets.SecretRef.resolve`, which names the source and never what was read.
Without it (``rakka validate --no-secrets``) a configuration can be checked on a machine
that does not hold the keys.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from rakka_inference.core.config_convert import (
    INVALID,
    Converter,
    Issues,
    describe_kind,
    init_fields,
)
from rakka_inference.core.config_lines import FieldPath, LineLocator
from rakka_inference.core.config_rules import DeploymentCheck, shared_limit_conflicts, suggest
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment, TracingConfig
from rakka_inference.core.errors import ConfigError, ConfigIssue, SecretError
from rakka_inference.core.policies import CapacityPolicy, Serving
from rakka_inference.core.runtimes import (
    LocalRuntimeConfig,
    RemoteRuntimeConfig,
    RuntimeConfig,
    RuntimeKind,
    default_credential_env,
    infer_runtime,
    runtime_config_type,
)
from rakka_inference.core.secrets import Secret, SecretRef

__all__ = [
    "OTEL_EXTRA",
    "LoadedConfig",
    "load_config",
    "load_config_report",
    "missing_tracing_packages",
    "parse_config",
    "parse_config_report",
]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A configuration with the facts of how it was read, for summaries (``rakka validate``)."""

    config: Config
    source: str
    inferred_runtimes: frozenset[str] = frozenset()
    """Deployments whose ``runtime`` was inferred from the model name."""
    default_credentials: frozenset[str] = frozenset()
    """Deployments whose ``api_key`` is the runtime's standard environment variable."""


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    check_secrets: bool = False,
) -> Config:
    """Read and validate a TOML configuration file. Raises :class:`ConfigError`.

    ``check_secrets``: also resolve every secret it would read at start (see the module)."""
    return load_config_report(path, environ, check_secrets=check_secrets).config


def parse_config(
    text: str,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    check_secrets: bool = False,
) -> Config:
    """Validate TOML text. Relative ``from_file`` paths resolve against ``base_dir`` (or cwd)."""
    return parse_config_report(
        text, source, environ, base_dir=base_dir, check_secrets=check_secrets
    ).config


def load_config_report(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    check_secrets: bool = False,
    checks: Sequence[DeploymentCheck] = (),
) -> LoadedConfig:
    """:func:`load_config`, with the facts of how the configuration was read.

    ``checks``: rules across deployments from a layer above (see :func:`parse_config_report`).
    """
    file = Path(path)
    source = os.fspath(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([ConfigIssue(source, "", f"cannot read the file: {reason}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(source, "", "the file is not UTF-8 text")]) from None
    return parse_config_report(
        text,
        source,
        environ,
        base_dir=file.absolute().parent,
        check_secrets=check_secrets,
        checks=checks,
    )


def parse_config_report(
    text: str,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    check_secrets: bool = False,
    checks: Sequence[DeploymentCheck] = (),
) -> LoadedConfig:
    """:func:`parse_config`, with the facts of how the configuration was read.

    ``checks``: rules across deployments that need a layer above this one (the circuit
    breakers' keys need the provider adapters'), run over the deployments that were built,
    their issues placed on the file's lines like the loader's own.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_issue(source, text, str(exc))]) from None
    issues = Issues(source, LineLocator(text))
    base = Path.cwd() if base_dir is None else Path(base_dir)
    loader = _Loader(
        issues,
        Converter(issues, base),
        os.environ if environ is None else environ,
        check_secrets=check_secrets,
        checks=checks,
    )
    config = loader.load(document)
    if issues.found or config is None:
        raise ConfigError(issues.sorted())
    return LoadedConfig(config, source, frozenset(loader.inferred), frozenset(loader.defaulted))


_SYNTAX_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def _syntax_issue(source: str, text: str, message: str) -> ConfigIssue:
    match = _SYNTAX_POSITION.search(message)
    if match is None:
        return ConfigIssue(source, "", f"TOML syntax error: {message}")
    reason = message[: match.start()]
    if match.group(1) is None:
        return ConfigIssue(
            source, "", f"TOML syntax error: {reason} (at end of document)", len(text.splitlines())
        )
    return ConfigIssue(
        source, "", f"TOML syntax error: {reason} (column {match.group(2)})", int(match.group(1))
    )


_TOP_LEVEL: Final = ("cluster", "deployment", "tracing")

OTEL_EXTRA: Final = "pip install 'rakka-inference[otel]'"


def missing_tracing_packages(config: TracingConfig) -> tuple[str, ...]:
    """The OpenTelemetry modules ``config`` needs that cannot be imported here."""
    needed = ["opentelemetry.sdk"]
    if config.exporter == "otlp":
        needed.append("opentelemetry.exporter.otlp.proto.http")
    return tuple(name for name in needed if not _importable(name))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


def _runtime_keys(*, remote: bool) -> frozenset[str]:
    kinds = (kind for kind in RuntimeKind if kind.is_remote == remote)
    return frozenset(name for kind in kinds for name in init_fields(runtime_config_type(kind)))


# Named in a local runtime's table, these get an explanation rather than "unknown key".
_REMOTE_ONLY_KEYS: Final = _runtime_keys(remote=True) - _runtime_keys(remote=False)


_Remote = TypeVar("_Remote", bound=RemoteRuntimeConfig)


@dataclass(slots=True)
class _References:
    """What the checks across deployments need from one ``[[deployment]]`` table."""

    index: int
    name: str | None
    aliases: tuple[str, ...]
    fallbacks: tuple[str, ...]
    capacity: CapacityPolicy | None


class _Loader:
    """Builds a :class:`Config` from a parsed document, recording every issue."""

    def __init__(
        self,
        issues: Issues,
        convert: Converter,
        environ: Mapping[str, str],
        *,
        check_secrets: bool = False,
        checks: Sequence[DeploymentCheck] = (),
    ) -> None:
        self._issues = issues
        self._convert = convert
        self._environ = environ
        self._check_secrets = check_secrets
        self._checks = checks
        self.inferred: set[str] = set()
        self.defaulted: set[str] = set()

    def load(self, document: dict[str, Any]) -> Config | None:
        for key in document:
            if key not in _TOP_LEVEL:
                self._issues.add((key,), f"unknown key {key!r}{suggest(key, _TOP_LEVEL)}")
        cluster = self._convert.record(
            ClusterConfig, document.get("cluster", {}), ("cluster",), base=ClusterConfig()
        )
        if isinstance(cluster, ClusterConfig):
            self._secret(("cluster", "admin_api_key"), cluster.admin_api_key)
            for position, ref in enumerate(cluster.client_api_keys):
                self._secret(("cluster", "client_api_keys", position), ref)
        tables = document.get("deployment", [])
        if not isinstance(tables, list):
            self._issues.add(
                ("deployment",),
                f"expected an array of tables ([[deployment]]), got {describe_kind(tables)}",
            )
            tables = []
        references: list[_References] = []
        deployments = [self._deployment(raw, i, references) for i, raw in enumerate(tables)]
        _check_references(references, self._issues)
        read = self._readable if self._check_secrets else None
        _check_shared_limits(deployments, self._issues, read)
        _check_across(deployments, self._checks, self._issues)
        if isinstance(cluster, ClusterConfig) and cluster.backend == "ray":
            _check_no_inline_secrets(cluster, deployments, self._issues)
        if isinstance(cluster, ClusterConfig) and cluster.backend == "local":
            _check_gpus_with_workers(cluster, deployments, self._issues)
        tracing = self._tracing(document.get("tracing", {}))
        built = [deployment for deployment in deployments if deployment is not None]
        if cluster is INVALID or tracing is INVALID or len(built) != len(deployments):
            return None
        return Config(cluster=cluster, deployments=tuple(built), tracing=tracing)

    def _tracing(self, raw: object) -> Any:
        tracing = self._convert.record(TracingConfig, raw, ("tracing",), base=TracingConfig())
        if isinstance(tracing, TracingConfig) and tracing.enabled:
            missing = missing_tracing_packages(tracing)
            if missing:
                self._issues.add(
                    ("tracing", "enabled"),
                    f"tracing needs OpenTelemetry, not installed here ({', '.join(missing)}): "
                    f"{OTEL_EXTRA}",
                )
        return tracing

    def _deployment(
        self, raw: object, index: int, references: list[_References]
    ) -> Deployment | None:
        path: FieldPath = ("deployment", index)
        values: dict[str, Any] = {}
        converted = self._convert.fields(
            Deployment, raw, path, skip=frozenset({"runtime", "runtime_config"}), partial=values
        )
        if not isinstance(raw, dict):
            return None
        serving = values.get("serving")
        references.append(
            _References(
                index,
                values.get("name"),
                values.get("aliases", ()),
                values.get("fallbacks", ()),
                serving.on_capacity_exhausted if isinstance(serving, Serving) else None,
            )
        )
        runtime_config_raw = raw.get("runtime_config", {})
        runtime = self._runtime(raw, values.get("model"), runtime_config_raw, path)
        if runtime is None:
            return None
        inferred = "runtime" not in raw
        runtime_config = self._runtime_config(
            runtime,
            runtime_config_raw,
            (*path, "runtime_config"),
            values.get("model") if inferred else None,
        )
        defaulted = False
        if isinstance(runtime_config, RemoteRuntimeConfig):
            runtime_config, defaulted = _default_api_key(runtime_config)
            self._secret(
                (*path, "runtime_config", runtime_config.credential_field),
                runtime_config.credential,
                default_of=runtime.value if defaulted else None,
            )
        if converted is None or runtime_config is None:
            return None
        name = converted["name"]
        if inferred:
            self.inferred.add(name)
        if defaulted:
            self.defaulted.add(name)
        return Deployment(**converted, runtime=runtime, runtime_config=runtime_config)

    def _secret(
        self, path: FieldPath, ref: SecretRef | None, *, default_of: str | None = None
    ) -> None:
        """With ``check_secrets``: an issue at ``path`` when ``ref`` cannot be read now.
        ``default_of``: the runtime whose standard variable ``ref`` is (nothing set)."""
        if not self._check_secrets or ref is None:
            return
        try:
            ref.resolve(self._environ)  # read, then dropped: only whether it can be read
        except SecretError as error:
            hint = "" if default_of is None else f" (the default for runtime {default_of!r})"
            self._issues.add(path, f"{error}{hint}")

    def _readable(self, ref: SecretRef) -> Secret | None:
        """``ref``'s secret, read now, for a comparison (its fingerprint); None when it
        cannot be read (that is an issue of its own, at its field)."""
        try:
            return ref.resolve(self._environ)
        except SecretError:
            return None

    def _runtime(
        self, raw: dict[str, Any], model: str | None, runtime_config: object, path: FieldPath
    ) -> RuntimeKind | None:
        if "runtime" in raw:
            runtime = self._convert.value(RuntimeKind, raw["runtime"], (*path, "runtime"))
            return None if runtime is INVALID else runtime
        if model is None:
            return None  # the missing or invalid model is already an issue
        table = runtime_config if isinstance(runtime_config, dict) else {}
        return infer_runtime(model, lambda kind: self._has_credentials(kind, table))

    def _has_credentials(self, runtime: RuntimeKind, table: dict[str, Any]) -> bool:
        config_type = runtime_config_type(runtime)
        if not issubclass(config_type, RemoteRuntimeConfig):
            return False
        variant = table.get("variant")
        variant = variant if isinstance(variant, str) else None
        if any(name in table for name in config_type.credential_fields_for(variant)):
            return True
        return bool(self._environ.get(config_type.credential_env_for(variant)))

    def _runtime_config(
        self, runtime: RuntimeKind, raw: object, path: FieldPath, inferred_from: str | None
    ) -> RuntimeConfig | None:
        """``inferred_from``: the model name, when the runtime was inferred from it."""
        cls = runtime_config_type(runtime)
        context = f" for runtime {runtime.value!r}"
        if not runtime.is_remote and isinstance(raw, dict):
            remote_keys = frozenset(key for key in raw if key in _REMOTE_ONLY_KEYS)
            for key in remote_keys:
                self._issues.add((*path, key), _remote_only(key, runtime, inferred_from))
            if remote_keys:
                self._convert.fields(cls, raw, path, skip=remote_keys, context=context)
                return None
        record = self._convert.record(cls, raw, path, context=context)
        return None if record is INVALID else record


def _default_api_key(config: _Remote) -> tuple[_Remote, bool]:
    """An unset API key becomes the runtime's conventional variable, made explicit; and
    whether it did. A config whose credential is another field (a Vertex service account,
    an Azure Entra ID token) is left as it is: its own checks report a missing one."""
    if config.credential_field != "api_key" or config.api_key is not None:
        return config, False
    return dataclasses.replace(config, api_key=SecretRef.from_env(config.credential_env)), True


def _remote_only(key: str, runtime: RuntimeKind, inferred_from: str | None) -> str:
    message = f"{key!r} is a remote-runtime setting, but the runtime is {runtime.value!r}"
    candidate = infer_runtime(inferred_from or "", lambda _kind: True)
    if inferred_from is None or not candidate.is_remote:
        return message
    env = default_credential_env(candidate)
    return (
        f"{message}, inferred from model {inferred_from!r} because no {candidate.value} "
        f"credentials are configured (set {env} or runtime_config.api_key, or runtime = "
        f"{candidate.value!r})"
    )


def _check_references(references: list[_References], issues: Issues) -> None:
    """Names and aliases unique; fallbacks name other, existing deployments."""
    first: dict[str, int] = {}
    for ref in references:
        if ref.name is None:
            continue
        if ref.name in first:
            issues.add(
                ("deployment", ref.index, "name"),
                f"duplicate deployment name {ref.name!r} (first used by "
                f"deployment[{first[ref.name]}])",
            )
        else:
            first[ref.name] = ref.index
    alias_owner: dict[str, str] = {}
    for ref in references:
        owner = ref.name if ref.name is not None else f"deployment[{ref.index}]"
        for position, alias in enumerate(ref.aliases):
            path = ("deployment", ref.index, "aliases", position)
            if alias in first:
                issues.add(path, f"alias {alias!r} clashes with the deployment named {alias!r}")
            elif alias in alias_owner:
                issues.add(path, f"alias {alias!r} is already used by {alias_owner[alias]!r}")
            else:
                alias_owner[alias] = owner
        for position, fallback in enumerate(ref.fallbacks):
            path = ("deployment", ref.index, "fallbacks", position)
            if fallback == ref.name:
                issues.add(path, "a deployment cannot fall back to itself")
            elif fallback not in first:
                hint = suggest(fallback, first)
                issues.add(path, f"fallback {fallback!r} is not a deployment{hint}")
        if ref.capacity is CapacityPolicy.FALLBACK and not ref.fallbacks:
            issues.add(
                ("deployment", ref.index, "serving", "on_capacity_exhausted"),
                "'fallback' needs a non-empty fallbacks list on the deployment",
            )


def _check_no_inline_secrets(
    cluster: ClusterConfig, deployments: list[Deployment | None], issues: Issues
) -> None:
    """On Ray the config's text is shipped to every node and kept in Ray's KV store: a
    secret written inline would travel and be stored with it, so it is refused there."""
    message = (
        "with backend = 'ray' a secret cannot be inline (the config is sent to every node and "
        'kept in Ray\'s KV store): use { from_env = "NAME" } or { from_file = "PATH" }, '
        "resolved on each node"
    )
    if cluster.admin_api_key is not None and cluster.admin_api_key.source == "inline":
        issues.add(("cluster", "admin_api_key"), message)
    for position, ref in enumerate(cluster.client_api_keys):
        if ref.source == "inline":
            issues.add(("cluster", "client_api_keys", position), message)
    for index, deployment in enumerate(deployments):
        if deployment is None:
            continue
        settings = deployment.runtime_config
        for item in dataclasses.fields(settings):
            value = getattr(settings, item.name)
            if isinstance(value, SecretRef) and value.source == "inline":
                issues.add(("deployment", index, "runtime_config", item.name), message)


def _check_gpus_with_workers(
    cluster: ClusterConfig, deployments: list[Deployment | None], issues: Issues
) -> None:
    """Each worker of a node runs the whole topology: a replica on GPUs would be started by
    every worker, on the same GPUs. Until one worker can own a node's local engines, a
    local deployment on GPUs needs ``workers = 1`` (or a Ray cluster, where a replica is
    one actor whatever the gateways)."""
    if cluster.workers <= 1:
        return
    for index, deployment in enumerate(deployments):
        config = None if deployment is None else deployment.runtime_config
        if not isinstance(config, LocalRuntimeConfig):
            continue
        need, field = config.gpu_request()
        if need and field is not None:
            issues.add(
                ("deployment", index, "runtime_config", field),
                f"asks for {need} GPU{'s' if need != 1 else ''} per replica, and with "
                f"[cluster].workers = {cluster.workers} every worker would start its own "
                "replica on the same GPUs: serve GPU models with workers = 1, or on a Ray "
                "cluster (backend = 'ray')",
            )


def _check_across(
    deployments: list[Deployment | None], checks: Sequence[DeploymentCheck], issues: Issues
) -> None:
    """The caller's rules across deployments, over those that were built."""
    indexed = [(i, d) for i, d in enumerate(deployments) if d is not None]
    built = [d for _, d in indexed]
    for check in checks:
        for issue in check(built):
            issues.add(("deployment", indexed[issue.position][0], *issue.field), issue.message)


def _check_shared_limits(
    deployments: list[Deployment | None],
    issues: Issues,
    read: Callable[[SecretRef], Secret | None] | None,
) -> None:
    """Deployments that share a rate limiter set the same ``rate_limits`` (DESIGN §4); with
    ``read``, credentials are compared by what they hold."""
    indexed = [(i, d) for i, d in enumerate(deployments) if d is not None]
    for conflict in shared_limit_conflicts((d for _, d in indexed), read):
        path = ("deployment", indexed[conflict.position][0], "runtime_config", "rate_limits")
        issues.add(path, conflict.message)
