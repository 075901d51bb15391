"""The serving topology: gateway, per-request actors, coordinator, engines, deployments."""
