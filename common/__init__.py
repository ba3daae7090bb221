"""Shared code for every method: data sources, splits, metrics, device selection, run logging."""
