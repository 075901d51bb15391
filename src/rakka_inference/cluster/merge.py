"""One answer for a group of gateways (the workers of a node, the nodes of a cluster): their
``/metrics`` and admin views merged.

Pure functions over what each member answered, so the merge is tested on its own. The
examples below are a node's (members are workers, labelled ``worker``); a cluster's
gateways are labelled ``node`` the same way.

Metrics
-------
:func:`merge_metrics` labels every sample with the worker that counted it
(``worker="w0"``) rather than summing: a counter of a restarted worker starts again from
zero under its own label, which Prometheus reads as a counter reset, where a sum would go
backwards. ``sum without (worker) (...)`` gives the node's figure. The exposition format
wants a family's lines together, so the families are written in the order first seen, each
with its ``HELP`` and ``TYPE`` once and then every worker's samples.

Admin views
-----------
:func:`merge_status` and its helpers take each worker's JSON view (``None`` for a worker
that did not answer) and give the node's: a deployment appears once, its replicas those of
every worker (each marked with its ``worker``); circuits, limiters and budgets are listed per
worker, each row marked; a cost report is summed over the workers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "WorkerView",
    "label_sample",
    "merge_costs",
    "merge_deployments",
    "merge_metrics",
    "merge_rows",
    "merge_status",
]

WorkerView = tuple[str, Mapping[str, Any] | None]
"""A worker's name and its answer (None when it did not answer)."""

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def label_sample(line: str, member: str, label: str = "worker") -> str:
    """``line`` (a sample of the text exposition format) with ``label="member"`` as its first
    label."""
    match = _NAME.match(line)
    if match is None:
        return line
    end = match.end()
    pair = f'{label}="{member}"'
    if line[end : end + 1] == "{":
        rest = line[end + 1 :]
        return f"{line[:end]}{{{pair}{'' if rest.startswith('}') else ','}{rest}"
    return f"{line[:end]}{{{pair}}}{line[end:]}"


class _Family:
    __slots__ = ("header", "samples")

    def __init__(self) -> None:
        self.header: list[str] = []
        self.samples: list[str] = []


def merge_metrics(parts: Iterable[tuple[str, str]], label: str = "worker") -> str:
    """The members' expositions ``(member, text)`` as one, every sample labelled."""
    families: dict[str, _Family] = {}
    for worker, text in parts:
        current: str | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                fields = line.split(maxsplit=3)
                if len(fields) >= 3 and fields[1] in ("HELP", "TYPE"):
                    current = fields[2]
                    family = families.setdefault(current, _Family())
                    if not any(h.split(maxsplit=3)[1] == fields[1] for h in family.header):
                        family.header.append(line)
                continue
            match = _NAME.match(line)
            name = match.group() if match else line
            if current is None or not name.startswith(current):
                current = name
            families.setdefault(current, _Family()).samples.append(
                label_sample(line, worker, label)
            )
    out: list[str] = []
    for family in families.values():
        out.extend(family.header)
        out.extend(family.samples)
    return "\n".join(out) + "\n" if out else ""


def merge_rows(
    views: Sequence[WorkerView], field: str, label: str = "worker"
) -> list[dict[str, Any]]:
    """Every member's rows of ``field`` (a list of objects), each marked with its member."""
    rows: list[dict[str, Any]] = []
    for worker, view in views:
        if view is None:
            continue
        rows.extend({label: worker, **row} for row in view.get(field) or ())
    return rows


def merge_deployments(
    views: Sequence[WorkerView], field: str = "deployments", label: str = "worker"
) -> list[Any]:
    """One entry per deployment: the first member's view of it, with the replicas of all
    (each marked with its member) and ``<label>s``, the members that run it."""
    merged: dict[str, dict[str, Any]] = {}
    for worker, view in views:
        if view is None:
            continue
        for deployment in view.get(field) or ():
            name = deployment["name"]
            entry = merged.get(name)
            if entry is None:
                entry = merged[name] = {**deployment, "replicas": [], f"{label}s": []}
            entry[f"{label}s"].append(worker)
            entry["replicas"].extend(
                {label: worker, **replica} for replica in deployment.get("replicas") or ()
            )
    return [merged[name] for name in sorted(merged)]


def merge_costs(views: Sequence[WorkerView]) -> list[dict[str, Any]]:
    """A cost report summed over the workers: rows keyed by every non-numeric field."""
    totals: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
    for _worker, view in views:
        if view is None:
            continue
        for row in view.get("data") or ():
            key = tuple(
                (k, v) for k, v in sorted(row.items()) if not _is_number(v) or k == "window_s"
            )
            total = totals.get(key)
            if total is None:
                totals[key] = dict(row)
                continue
            for k, v in row.items():
                if _is_number(v) and k != "window_s":
                    total[k] = total.get(k, 0) + v
    return list(totals.values())


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def merge_status(views: Sequence[WorkerView], label: str = "worker") -> dict[str, Any]:
    """``/admin/status`` for the group: ``<label>s`` lists who answered."""
    return {
        f"{label}s": [{label: member, "answered": view is not None} for member, view in views],
        "deployments": merge_deployments(views, "deployments", label),
        "circuits": merge_rows(views, "circuits", label),
        "ratelimits": merge_rows(views, "ratelimits", label),
        "budgets": merge_rows(views, "budgets", label),
    }
