"""The layer-rule registry: one module per layer kind."""
