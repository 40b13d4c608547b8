"""Compatibility alias of :mod:`host.lstm_image` plus the Verilator runner :mod:`hdl.lstm_sim`
(the memory image moved to host/, which never imports hdl/); new code imports those."""

from host.lstm_image import *  # noqa: F403
from host.lstm_image import __all__ as _image_all

from .lstm_sim import *  # noqa: F403
from .lstm_sim import __all__ as _sim_all

__all__ = [*_image_all, *_sim_all]
