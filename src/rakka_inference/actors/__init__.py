"""The actor kernel: actors on asyncio, one task each, bounded mailboxes, ask/tell,
one-for-one supervision with a restart limit, watch, and graceful shutdown.

>>> class Counter(Actor[int]):
...     def __init__(self) -> None:
...         self.total = 0
...     async def receive(self, message: int) -> int:
...         self.total += message
...         return self.total
>>> async def main() -> int:
...     async with ActorSystem() as system:
...         counter = system.spawn(Counter, "counter")
...         counter.tell(1)
...         return await counter.ask(2)
"""

from rakka_inference.actors.actor import Actor, ActorContext, Terminated
from rakka_inference.actors.ref import DEFAULT_ASK_TIMEOUT, ActorRef
from rakka_inference.actors.supervision import Decider, Directive, OneForOneStrategy
from rakka_inference.actors.system import DEFAULT_MAILBOX_CAPACITY, ActorSystem

__all__ = [
    "DEFAULT_ASK_TIMEOUT",
    "DEFAULT_MAILBOX_CAPACITY",
    "Actor",
    "ActorContext",
    "ActorRef",
    "ActorSystem",
    "Decider",
    "Directive",
    "OneForOneStrategy",
    "Terminated",
]
