"""How many replicas must hold a write before it counts: Redis ``WAIT`` after the submit script and after
each worker transition (docs/scaling.md, *Durability*).

Redis replicates asynchronously: a primary SIGKILLed right after answering can lose its last writes
when Sentinel promotes a replica that had not received them. ``WAIT n timeout`` after a write blocks
until ``n`` replicas acknowledged every write of *this connection*, so it must run on the connection
that wrote: the submit sends it in the same pipeline as the script; the worker's transitions run on a
one-connection client (:class:`shared.queue.repository.SyncRenderQueue`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shared.queue.errors import NotReplicated


class Durability(NamedTuple):
    replicas: int = 0
    """Replicas that must acknowledge; 0: do not wait (a single Redis, or the AOF/replication trade-off)."""
    timeout_ms: int = 1000

    def check(self, acked: Any) -> None:
        """Raise :class:`NotReplicated` if ``acked`` (WAIT's answer) is short of :attr:`replicas`."""
        if int(acked) < self.replicas:
            raise NotReplicated(int(acked), self.replicas, self.timeout_ms)
