"""The ``rakka`` command.

    rakka serve [--config FILE] [--host H] [--port P] [--workers N]
                            serve the gateway (no config: the embedded sandbox)
    rakka validate [--no-secrets] FILE
                            check a configuration, and that its secrets can be read;
                            summarize what it deploys
    rakka demo              show retries, the circuit breaker, fallback and key rotation
    rakka status            a running gateway's deployments, circuits, limits and spend
    rakka cost-report       spend per deployment and model over a window
    rakka rotate-credentials DEPLOYMENT
                            new sessions with a fresh credential, dropping nothing
    rakka --version

Exit status: 0 on success, 1 when the configuration is rejected or cannot be read (a
secret that cannot be read included) or ``rakka serve`` cannot bind its port, 2 on a usage
error, 3 when ``rakka serve`` stopped but its grace period ran out first (the requests
still in flight were cut, each told so in its route's format). Summaries and errors name
where each key comes from (``env:OPENAI_API_KEY``), never a key, not even in part.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from rakka_inference import __version__
from rakka_inference.apps.cli_admin import add_commands
from rakka_inference.core.config import LoadedConfig, load_config_report
from rakka_inference.core.deployment import MAX_WORKERS, ClusterConfig, Deployment
from rakka_inference.core.errors import ConfigError
from rakka_inference.core.runtimes import RemoteRuntimeConfig
from rakka_inference.remote.breaker_registry import breaker_conflicts

__all__ = ["format_summary", "main"]

_Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    command: _Command = args.command
    return command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rakka",
        description="Serve LLM requests from remote providers and local engines.",
    )
    parser.add_argument("--version", action="version", version=f"rakka {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    validate = commands.add_parser(
        "validate",
        help="check a configuration file and summarize it",
        description="Check a configuration file; print every issue, or a summary. Every "
        "secret it would read at start ({ from_env = ... }, { from_file = ... }) is read "
        "once and dropped: one that cannot be is an issue naming the file, line and field, "
        "never a value.",
    )
    validate.add_argument("file", metavar="FILE", help="the TOML configuration")
    validate.add_argument(
        "--no-secrets",
        dest="secrets",
        action="store_false",
        help="do not read the secrets: for checking a config away from the machine that serves it",
    )
    validate.set_defaults(command=_validate)
    add_commands(commands)
    serve = commands.add_parser(
        "serve",
        help="serve the OpenAI-compatible gateway",
        description="Serve the gateway. With no --config: mock providers in this process, "
        "plus a real deployment for each provider key in the environment; the admin API "
        "(rakka status) takes the key in $RAKKA_ADMIN_KEY, or a key generated and printed "
        "at start. A config that cannot be served (a secret that cannot be read, say) or a "
        "port in use is said on standard error, and the exit status is 1.",
    )
    serve.add_argument("--config", metavar="FILE", help="the TOML configuration")
    serve.add_argument(
        "--host", type=_host, help="overrides [cluster].bind's host: a host name or IP address"
    )
    serve.add_argument(
        "--port", type=_port, help="overrides [cluster].bind's port: 1..65535 (0 is refused)"
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        help="processes serving the port on this node (overrides [cluster].workers); "
        "they share the rate limits and circuits",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds to finish in-flight requests on stop; past it they are cut, each "
        "client told why, and the exit status is 3",
    )
    serve.set_defaults(command=_serve)
    demo = commands.add_parser(
        "demo",
        help="show the failure paths against in-process mock providers",
        description="Start mock providers and a gateway, then show the happy path, a 429 "
        "retried, the circuit opening, a fallback and a key rotation, in one report.",
    )
    demo.set_defaults(command=_demo)
    return parser


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _host(value: str) -> str:
    """``--host``: an IP address (IPv6 with or without brackets) or a DNS host name."""
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    # A name whose last label is a number would be read as a (bad) IPv4 address.
    if (
        len(value) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return value
    raise argparse.ArgumentTypeError(f"not a host name or IP address: {value!r}")


def _port(value: str) -> int:
    """``--port``: 1..65535, as ``[cluster].bind`` takes it. Port 0 ("any free port") is
    refused: the gateway announces the port it serves on, and could not name that one."""
    if not re.fullmatch(r"[0-9]{1,5}", value) or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 1..65535, got {value!r}")
    return int(value)


def _workers(value: str) -> int:
    """``--workers``: 1..MAX_WORKERS, as ``[cluster].workers`` takes it."""
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a number in 1..{MAX_WORKERS}, got {value!r}")
    return int(value)


def _demo(args: argparse.Namespace) -> int:
    from rakka_inference.apps.demo import main as demo_main  # noqa: PLC0415

    return demo_main()


def _serve(args: argparse.Namespace) -> int:
    from rakka_inference.apps.serve import serve  # noqa: PLC0415 - keeps validate light

    try:
        return serve(
            args.config,
            host=args.host,
            port=args.port,
            grace_s=args.grace,
            workers=args.workers,
        )
    except ConfigError as exc:
        # One issue (a secret not set, say) is one line; more are listed as validate does.
        if len(exc.issues) == 1:
            print(f"rakka: cannot serve: {exc.issues[0]}", file=sys.stderr)
            return 1
        print(
            f"rakka: cannot serve: {args.config}: configuration rejected "
            f"({len(exc.issues)} issues)",
            file=sys.stderr,
        )
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1


def _validate(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # The conflicts an apply would refuse that the config layer cannot see alone.
            loaded = load_config_report(
                args.file, check_secrets=args.secrets, checks=(breaker_conflicts,)
            )
        except ConfigError as exc:
            loaded = None
            issues = exc.issues
    for warning in caught:
        print(f"warning: {warning.filename}:{warning.lineno}: {warning.message}", file=sys.stderr)
    if loaded is None:
        count = len(issues)
        print(
            f"{args.file}: configuration rejected ({count} issue{'s' if count != 1 else ''})",
            file=sys.stderr,
        )
        for issue in issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    print(format_summary(loaded))
    return 0


def format_summary(loaded: LoadedConfig) -> str:
    """What a configuration deploys, one line per deployment. Never a secret's value."""
    config = loaded.config
    count = len(config.deployments)
    lines = [
        f"{loaded.source}: OK",
        _cluster_line(config.cluster),
        f"{count} deployment{'s' if count != 1 else ''}{':' if count else ''}",
    ]
    lines.extend(_deployment_line(deployment, loaded) for deployment in config.deployments)
    return "\n".join(lines)


def _cluster_line(cluster: ClusterConfig) -> str:
    clients = ", ".join(ref.describe() for ref in cluster.client_api_keys) or "none (open)"
    admin = cluster.admin_api_key.describe() if cluster.admin_api_key else "none (admin API off)"
    workers = f" ({cluster.workers} workers)" if cluster.workers > 1 else ""
    mocks = "; mock providers in process" if cluster.mock_providers else ""
    return (
        f"cluster {cluster.name!r} on {cluster.bind}{workers}; client keys: {clients}; "
        f"admin key: {admin}{mocks}"
    )


# How a summary names each kind of credential field.
_CREDENTIAL_WORDS = {"api_key": "key", "azure_ad_token": "token", "credentials": "credentials"}


def _deployment_line(deployment: Deployment, loaded: LoadedConfig) -> str:
    model = deployment.model
    if deployment.upstream_model != model:
        model += f" (upstream {deployment.upstream_model})"
    settings = deployment.runtime_config
    notes: list[str] = []
    if isinstance(settings, RemoteRuntimeConfig) and settings.named_variant is not None:
        notes.append(settings.named_variant)
    if deployment.name in loaded.inferred_runtimes:
        notes.append("inferred")
    runtime = deployment.runtime.value + (f" ({', '.join(notes)})" if notes else "")
    parts = [f"model {model}", f"runtime {runtime}", f"replicas {deployment.replicas}"]
    if deployment.fallbacks:
        parts.append(f"fallbacks {', '.join(deployment.fallbacks)}")
    if deployment.aliases:
        parts.append(f"aliases {', '.join(deployment.aliases)}")
    if isinstance(settings, RemoteRuntimeConfig):
        parts.append(_credential(settings, deployment.name in loaded.default_credentials))
    return f"  {deployment.name}: " + "; ".join(parts)


def _credential(settings: RemoteRuntimeConfig, defaulted: bool) -> str:
    word = _CREDENTIAL_WORDS.get(settings.credential_field, settings.credential_field)
    ref = settings.credential
    if ref is None:
        return f"{word} none"
    return f"{word} {ref.describe()}{' (default)' if defaulted else ''}"


if __name__ == "__main__":  # pragma: no cover - `python -m rakka_inference.apps.cli`
    sys.exit(main())
