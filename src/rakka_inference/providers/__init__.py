"""Provider adapters, one module per wire format, behind one protocol."""
