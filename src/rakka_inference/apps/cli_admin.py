"""The ``rakka`` commands that operate a running gateway through its admin API.

    rakka status [--url URL] [--json]
    rakka cost-report [--window 24h] [--url URL] [--json]
    rakka rotate-credentials DEPLOYMENT [--url URL]

The admin key is read from an environment variable (``RAKKA_ADMIN_KEY`` unless
``--admin-key-env`` names another), never from a flag: flags show in process listings.
A gateway serving a config takes its ``[cluster].admin_api_key``; ``rakka serve`` with no
config (the sandbox) takes ``RAKKA_ADMIN_KEY`` when it is set, else generates a key and
prints it once at start, as ``export RAKKA_ADMIN_KEY=...``. The admin API is never open
without a key, not even on loopback. The URL defaults to ``RAKKA_URL``, else
``http://127.0.0.1:8080``. Exit status: 0 on success, 1 when the gateway refused or could
not be reached (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["ADMIN_KEY_ENV", "add_commands"]

ADMIN_KEY_ENV = "RAKKA_ADMIN_KEY"
"""Where the admin commands read the admin key, and where the sandbox takes (or puts) its."""

_KEY_HELP = (
    "The admin key is read from $RAKKA_ADMIN_KEY (or the variable --admin-key-env names), "
    "never from a flag. A gateway serving a config takes [cluster].admin_api_key; `rakka "
    "serve` with no config takes $RAKKA_ADMIN_KEY, or generates a key and prints it at start "
    "as `export RAKKA_ADMIN_KEY=...`. The admin API is never open without a key."
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def add_commands(commands: Any) -> None:
    """Add ``status``, ``cost-report`` and ``rotate-credentials`` to the subparsers."""
    status = commands.add_parser(
        "status",
        help="deployments, replicas, circuits, limits and spend of a running gateway",
        description="Show a running gateway's deployments, replicas, circuits, rate limits "
        "and spend, through its admin API. " + _KEY_HELP,
    )
    _common(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(command=_status)
    costs = commands.add_parser(
        "cost-report",
        help="spend per deployment and model",
        description="Spend per deployment and model over a window. " + _KEY_HELP,
    )
    _common(costs)
    costs.add_argument("--window", default="24h", help="how far back: 30m, 6h, 24h (max 1 day)")
    costs.add_argument("--json", action="store_true", help="print the raw JSON")
    costs.set_defaults(command=_cost_report)
    rotate = commands.add_parser(
        "rotate-credentials",
        help="rebuild a deployment's sessions with a fresh credential; drops nothing",
        description="Rebuild a deployment's sessions with a fresh credential; running "
        "requests finish on the old ones. " + _KEY_HELP,
    )
    rotate.add_argument("deployment", metavar="DEPLOYMENT")
    _common(rotate)
    rotate.set_defaults(command=_rotate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("RAKKA_URL", "http://127.0.0.1:8080"),
        help="the gateway (default: $RAKKA_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--admin-key-env",
        default=ADMIN_KEY_ENV,
        metavar="VAR",
        help=f"the environment variable holding the admin key (default: {ADMIN_KEY_ENV})",
    )


class _Refused(Exception):
    pass


def _call(args: argparse.Namespace, method: str, path: str) -> Any:
    key = os.environ.get(args.admin_key_env)
    if not key:
        raise _Refused(
            f"set {args.admin_key_env} to the gateway's admin key: its config's "
            "[cluster].admin_api_key, or the key `rakka serve` printed at start (no config)"
        )
    request = urllib.request.Request(  # noqa: S310 - the operator's own gateway URL
        args.url.rstrip("/") + path,
        method=method,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        data=b"{}" if method == "POST" else None,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = error.reason
        raise _Refused(f"the gateway answered {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise _Refused(f"cannot reach {args.url}: {reason}") from None


def _run(action: Any) -> int:
    try:
        print(action())
    except _Refused as refused:
        print(f"rakka: {refused}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------- commands


def _status(args: argparse.Namespace) -> int:
    def show() -> str:
        status = _call(args, "GET", "/admin/status")
        return json.dumps(status, indent=2) if args.json else format_status(status)

    return _run(show)


def _cost_report(args: argparse.Namespace) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", args.window.strip())
    if match is None:
        print(f"rakka: --window {args.window!r}: use a number and s, m, h or d", file=sys.stderr)
        return 2
    window = float(match.group(1)) * _UNITS[match.group(2) or "s"]

    def show() -> str:
        report = _call(args, "GET", f"/admin/costs?window_s={window:g}")
        return json.dumps(report, indent=2) if args.json else format_costs(report)

    return _run(show)


def _rotate(args: argparse.Namespace) -> int:
    def rotate() -> str:
        path = f"/admin/deployments/{urllib.parse.quote(args.deployment, safe='')}"
        answer = _call(args, "POST", f"{path}/rebuild_session")
        generations = ", ".join(str(g) for g in answer["session_generations"])
        return (
            f"{args.deployment}: new sessions (generation {generations}); "
            "running requests finish on the old ones"
        )

    return _run(rotate)


# ---------------------------------------------------------------------- rendering


def format_status(status: dict[str, Any]) -> str:
    lines: list[str] = []
    if "workers" in status:  # a node of many workers: each row names its worker
        lines += ["WORKER  PID       STATE      RESTARTS"]
        lines += [
            f"{w['worker']:<7} {w.get('pid') or '-'!s:<9} {w.get('state', '?'):<10} "
            f"{w.get('restarts', 0):>8}"
            for w in status["workers"]
        ]
        lines.append("")
    if "nodes" in status:  # a cluster on Ray: each row names its node
        singletons = status.get("singletons") or {}
        lines += ["NODE          STATE  GATEWAY                 SINGLETONS"]
        for node in status["nodes"]:
            here = [
                role
                for key, role in (
                    ("deployment_manager", "deployment manager"),
                    ("limit_authority", "limit authority"),
                )
                if singletons.get(key) == node["node"]
            ]
            state = "up" if node["alive"] else "down"
            gateway = node.get("gateway") or node.get("problem") or "-"
            lines.append(f"{node['node'][:12]:<13} {state:<6} {gateway:<23} {', '.join(here)}")
        if status.get("local_replicas"):
            lines += ["", "LOCAL REPLICA                                   NODE"]
            lines += [
                f"{r['replica'][:47]:<47} {(r.get('node') or '')[:12] or r.get('problem', '-')}"
                for r in status["local_replicas"]
            ]
        lines.append("")
    lines += ["DEPLOYMENT        STATE     GEN  REPLICAS  IN FLIGHT  QUEUED  RUNTIME"]
    for d in status["deployments"]:
        replicas = d["replicas"]
        healthy = sum(1 for r in replicas if r["healthy"])
        busy = sum(r["in_flight"] for r in replicas)
        capacity = sum(r["capacity"] for r in replicas)
        queued = sum(r["queued"] for r in replicas)
        lines.append(
            f"{d['name']:<17} {d['state']:<9} {d['generation']:>3}  "
            f"{healthy}/{len(replicas):<7} {busy:>5}/{capacity:<4} {queued:>6}"
            f"  {d['runtime']} {d['model']}"
        )
    lines += ["", "CIRCUIT" + " " * 44 + "STATE      FAILURES"]
    lines += [
        f"{_circuit(c)[:50]:<50} {c['state']:<10} {c['consecutive_failures']:>8}"
        for c in status["circuits"]
    ]
    lines += ["", "RATE LIMIT                      REQUESTS/MIN     TOKENS/MIN"]
    lines += [
        f"{_worker(r) + r['provider'] + ' ' + r['model']:<31} "
        f"{_use(r['requests_in_window'], r['requests_per_minute']):<16} "
        f"{_use(r['tokens_in_window'], r['tokens_per_minute'])}"
        for r in status["ratelimits"]
    ]
    lines += ["", "SPEND (USD)       LAST HOUR           LAST DAY            IN FLIGHT"]
    lines += [
        f"{_worker(b) + b['deployment']:<17} "
        f"{_spend(b['settled_last_hour_usd'], b['limit_hour_usd']):<19} "
        f"{_spend(b['settled_last_day_usd'], b['limit_day_usd']):<19} "
        f"{b['reserved_usd']:.4f} reserved"
        for b in status["budgets"]
    ]
    return "\n".join(lines)


def format_costs(report: dict[str, Any]) -> str:
    lines = [
        f"spend over the last {report['window_s']:g} s",
        f"{'DEPLOYMENT':<17} {'MODEL':<31} {'REQUESTS':>8}  USD",
    ]
    total = 0.0
    for row in report["data"]:
        total += row["spent_usd"]
        lines.append(
            f"{row['deployment']:<17} {row['model']:<31} {row['requests']:>8}  "
            f"{row['spent_usd']:.6f}"
        )
    lines.append(f"{'total':<59}{total:.6f}")
    return "\n".join(lines)


def _worker(row: dict[str, Any]) -> str:
    """``w0: `` for a row of one worker of a node (a node's id, shortened, on a cluster),
    else nothing."""
    member = row.get("worker") or (row.get("node") or "")[:12]
    return f"{member}: " if member else ""


def _circuit(row: dict[str, Any]) -> str:
    """A circuit's row name: its worker, provider, upstream model (where known), endpoint."""
    parts = (row["provider"], row.get("model") or "", row["endpoint"])
    return _worker(row) + " ".join(part for part in parts if part)


def _use(used: int, limit: int | None) -> str:
    return f"{used}/{limit}" if limit is not None else f"{used}/unlimited"


def _spend(spent: float, limit: float | None) -> str:
    return f"{spent:.4f}" + (f" of {limit:g}" if limit is not None else "")
