"""Integrations with other libraries (joblib)."""
