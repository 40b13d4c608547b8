"""Eager validation of generator parameters (re-exported from :mod:`host.params`)."""

from __future__ import annotations

from host.params import check_int

__all__ = ["check_int"]
