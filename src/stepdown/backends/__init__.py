"""Backends: one small module each, imported on first use."""
