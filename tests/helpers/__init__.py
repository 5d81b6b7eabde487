"""Shared test helpers (real services started for tests)."""
