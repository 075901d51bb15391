"""Local model runners (GPU and CPU)."""
