"""The core every layer may import: the data model, the plugin contracts, config primitives,
the throttled log, the secret redactor, backoff and the worker-thread runner (docs/architecture.md)."""
