"""Shared test helpers (imported as `helpers.*`; tests/ is on pytest's pythonpath)."""
