"""CircuitGossip on its own: a worker's circuit news names its breaker by (provider,
endpoint, model), so one model's circuit opening never opens another's on the others."""

from __future__ import annotations

from collections.abc import Callable

from rakka_inference.cluster.gossip import CircuitGossip
from rakka_inference.core.errors import ServerError
from rakka_inference.core.policies import CircuitBreakerConfig
from rakka_inference.remote.breaker import BreakerKey, BreakerState
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.remote.replicator_codec import CircuitSignal, decode, encode_circuit
from rakka_inference.testkit.clock import FakeClock

ENDPOINT = "https://api.openai.com/v1"
GPT4O = BreakerKey("openai", ENDPOINT, "gpt-4o")
MINI = BreakerKey("openai", ENDPOINT, "gpt-4o-mini")
CONFIG = CircuitBreakerConfig(failure_threshold=1, open_duration_ms=30_000)


class Channel:
    """The datagrams a worker sends, and a way to hand it the others'."""

    node_id = "w1"

    def __init__(self) -> None:
        self.sent: list[CircuitSignal] = []
        self.deliver: Callable[[CircuitSignal], None] | None = None

    def publish_circuit(self, signal: CircuitSignal) -> None:
        decoded = decode(encode_circuit(signal))  # what the wire carries
        assert isinstance(decoded, CircuitSignal)
        self.sent.append(decoded)

    def subscribe_circuit(self, deliver: Callable[[CircuitSignal], None]) -> None:
        self.deliver = deliver

    def hear(self, signal: CircuitSignal) -> None:
        assert self.deliver is not None
        self.deliver(decode(encode_circuit(signal)))  # type: ignore[arg-type]


def worker(clock: FakeClock | None = None) -> tuple[Channel, CircuitGossip, BreakerRegistry]:
    channel = Channel()
    gossip = CircuitGossip(channel, hold_s=2.0)
    registry = BreakerRegistry(clock=clock or FakeClock(), on_transition=gossip.on_transition)
    gossip.breakers = registry
    for key in (GPT4O, MINI):
        registry.get_or_create(key, CONFIG, holder=key.model)
    return channel, gossip, registry


def state(registry: BreakerRegistry, key: BreakerKey) -> BreakerState:
    breaker = registry.get(key)
    assert breaker is not None
    return breaker.state


def test_a_local_trip_is_sent_with_its_model() -> None:
    clock = FakeClock()
    channel, gossip, registry = worker(clock)
    breaker = registry.get(GPT4O)
    assert breaker is not None
    breaker.record_failure(breaker.admit(), ServerError("500", upstream_status=500))
    assert channel.sent == [CircuitSignal("w1", "openai", ENDPOINT, "open", 30.0, "gpt-4o")]
    clock.advance(30)
    probe = breaker.admit()  # half-open is no news
    assert len(channel.sent) == 1
    breaker.release(probe)
    breaker.force_close()
    assert channel.sent[-1] == CircuitSignal("w1", "openai", ENDPOINT, "closed", model="gpt-4o")
    assert gossip.sent == 2


def test_another_worker_s_news_opens_only_that_model() -> None:
    channel, gossip, registry = worker()
    channel.hear(CircuitSignal("w2", "openai", ENDPOINT, "open", 10.0, model="gpt-4o-mini"))
    assert state(registry, MINI) is BreakerState.OPEN
    assert state(registry, GPT4O) is BreakerState.CLOSED
    mini = registry.get(MINI)
    assert mini is not None
    assert mini.snapshot().open_until == 1012.0  # its time left plus the hold
    assert "forced open by worker w2" in mini.snapshot().cause
    assert channel.sent == []  # no echo
    # Closed news closes it; closed news for a closed breaker changes nothing.
    channel.hear(CircuitSignal("w2", "openai", ENDPOINT, "closed", model="gpt-4o-mini"))
    channel.hear(CircuitSignal("w2", "openai", ENDPOINT, "closed", model="gpt-4o"))
    assert state(registry, MINI) is BreakerState.CLOSED
    assert gossip.applied == 2
    # A model this worker never calls, or a worker with no breakers yet: ignored.
    channel.hear(CircuitSignal("w2", "openai", ENDPOINT, "open", 10.0, model="o3"))
    gossip.breakers = None
    channel.hear(CircuitSignal("w2", "openai", ENDPOINT, "open", 10.0, model="gpt-4o"))
    assert gossip.applied == 2
    assert state(registry, GPT4O) is BreakerState.CLOSED


def test_news_of_a_worker_of_the_release_before_speaks_for_the_whole_endpoint() -> None:
    channel, gossip, registry = worker()
    channel.hear(CircuitSignal("w0", "openai", ENDPOINT, "open", 10.0))  # no model
    assert state(registry, GPT4O) is BreakerState.OPEN
    assert state(registry, MINI) is BreakerState.OPEN
    channel.hear(CircuitSignal("w0", "openai", "https://elsewhere/v1", "open", 10.0))
    assert gossip.applied == 2
    assert channel.sent == []
