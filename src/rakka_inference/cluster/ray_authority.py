"""The strict-limit authority singleton on Ray.

The strict keys' :class:`~rakka_inference.remote.strict_lease.LeaseAuthority`, on the wall
clock, answering the wire lines of :mod:`rakka_inference.remote.strict_lease_wire` as a
named, detached Ray actor (see :mod:`rakka_inference.cluster.ray_singletons`). Its record
is written to Ray's KV store after every change, before the reply, so a restarted authority
admits exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
import time

import ray

from rakka_inference.cluster.ray_nodes import kv_get, kv_put
from rakka_inference.cluster.ray_transport import exit_this_actor
from rakka_inference.remote.strict_lease import LeaseAuthority
from rakka_inference.remote.strict_lease_wire import handle_line

__all__ = ["RayAuthority"]

log = logging.getLogger("rakka_inference.cluster.ray_authority")


class RayAuthority:
    """The strict-limit authority singleton (see the module docstring)."""

    def __init__(self, namespace: str, lease_ttl: float = 1.0) -> None:
        self.namespace = namespace
        snapshot = kv_get(namespace, "limits")
        authority = None
        if snapshot is not None:
            try:
                authority = LeaseAuthority.restore(snapshot, time.time, lease_ttl=lease_ttl)
                log.info("the strict-limit authority restarted from its record")
            except ValueError as error:
                log.error("the strict-limit authority's record is unreadable: %s", error)
        self.authority = authority or LeaseAuthority(time.time, lease_ttl=lease_ttl)
        self._saved = self.authority.dirty

    def handle(self, line: bytes) -> bytes | None:
        """One wire line; the record is saved before the reply when it changed."""
        reply = handle_line(self.authority, line)
        if self.authority.dirty != self._saved:
            kv_put(self.namespace, "limits", self.authority.snapshot())
            self._saved = self.authority.dirty
        return reply

    def where(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def close(self) -> None:
        """End this actor's process the orderly way."""
        exit_this_actor()
