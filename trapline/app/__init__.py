"""The composition root: the only layer that knows every plugin (docs/architecture.md)."""
