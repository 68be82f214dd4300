"""Shared models and the pipeline between collectors and exporters."""
