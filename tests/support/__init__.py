"""Importable helpers for the tests and the benchmarks: real peers, fake endpoints, scenario helpers."""
