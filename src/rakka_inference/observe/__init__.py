"""Observability: the metrics a gateway keeps, their Prometheus exposition, and the
OpenTelemetry tracing backend."""
