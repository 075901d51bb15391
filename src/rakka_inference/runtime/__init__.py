"""The serving topology: gateway, per-request actors, coordinator, deployment manager,
placement, lifecycle and the admin API."""
