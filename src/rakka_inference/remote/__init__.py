"""Provider-neutral infrastructure for remote runtimes: streaming, failure policies, sessions."""
