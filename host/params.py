"""Eager validation of generator parameters, shared by the engines' parameter sets
(:mod:`host.memory_map`) and the HDL generators."""

from __future__ import annotations

__all__ = ["check_int"]


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """Return ``value`` if it is an integer in ``[lo, hi]`` (no upper bound when ``hi`` is
    None), else raise ``ValueError("`name` must be <kind>, not <value>")``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo \
            or (hi is not None and value > hi):
        if hi is None:
            kind = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        else:
            kind = f"an integer from {lo} to {hi}"
        raise ValueError(f"`{name}` must be {kind}, not {value!r}")
    return value
