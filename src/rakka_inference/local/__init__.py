"""Local engines: the local engine core, its two-tier supervision (WorkerActor and
ContextActor), and the runners it drives."""
