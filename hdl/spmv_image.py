"""Compatibility alias of :mod:`host.spmv_image` (the memory image moved to host/, which never
imports hdl/); new code imports ``host.spmv_image``."""

from host.spmv_image import *  # noqa: F403
from host.spmv_image import __all__  # noqa: F401
