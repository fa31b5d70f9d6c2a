"""Errors of the data layer: one line each, so console commands and the training loop can show them."""

from __future__ import annotations

from p2p_dist.errors import UserError


class DataError(UserError):
    """Shards, folders or index files that cannot be used as given (missing, mixed, wrong task)."""


class TooMuchBadData(DataError):
    """More corrupt samples than `data.max_bad_fraction` allows: the run stops rather than train on junk."""
