"""Wire formats two plugins share about one protocol (docs/architecture.md)."""
