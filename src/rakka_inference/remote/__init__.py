"""The remote engine: permit → breaker → retry, the rate limiter and its CRDT, circuit
breakers, sessions and credentials, and the HTTP transports."""
