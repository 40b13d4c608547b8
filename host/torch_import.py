"""Import PyTorch ``nn.Module`` networks as spine :class:`~host.floatmodel.FloatModel` graphs.

Supported layers (their weights are copied as float64):

* ``nn.Linear`` (``bias=False`` gives zero biases);
* ``nn.LSTM``, unidirectional, with or without a projection (``proj_size=P``: every layer
  gets its ``weight_hr_l{k}``, see :class:`host.floatmodel.LSTM`); ``num_layers > 1`` is
  expanded into stacked one-layer LSTMs.  ``batch_first`` only changes how PyTorch's own
  ``forward`` is called, not the weights, so both settings are accepted; spine feeds one
  ``(T, I)`` sequence.
  A missing bias (``bias=False``) gives zero biases.  The *next* layer decides what an LSTM
  returns: another LSTM gets the whole sequence (``return_sequences``), anything else (e.g. a
  ``nn.Linear`` classifier) gets the last output ``h_T`` (``r_T`` with a projection);
* ``nn.Conv2d`` with a square kernel, equal stride and padding in both directions (or
  ``padding="valid"`` / ``"same"`` with stride 1 and an odd kernel), ``groups=1``,
  ``dilation=1``, ``padding_mode="zeros"``; ``bias=False`` gives zero biases;
* ``nn.ReLU``, ``nn.MaxPool2d(2)`` (2x2, stride 2, no padding, floor), ``nn.Flatten()``
  (``start_dim=1``, ``end_dim=-1``);
* ``nn.Dropout`` (and its 1/2/3-d variants) and ``nn.Identity``, which do nothing at inference
  and are skipped.

Containers: ``nn.Sequential`` (nested to any depth), and any module with a ``spine_layers()``
method returning its layers (modules, possibly Sequentials) in execution order, which is how
a network whose ``forward`` is hand-written (an LSTM whose ``h_T`` feeds a classifier) tells
spine its data flow.  A bare supported layer is a one-layer model.

PyTorch is an optional dependency (``pip install 'spine[torch]'``) imported only when a
function here runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ModelError
from .floatmodel import LSTM, Conv2d, Flatten, FloatModel, Linear, MaxPool2d, ReLU

__all__ = ["SUPPORTED_LAYERS", "from_torch", "load_torch_checkpoint", "require_torch"]

SUPPORTED_LAYERS = ("nn.Linear", "nn.LSTM", "nn.Conv2d", "nn.ReLU", "nn.MaxPool2d(2)",
                    "nn.Flatten", "nn.Dropout", "nn.Identity", "nn.Sequential")
"""What :func:`from_torch` accepts, as named in its error messages."""

_SKIPPED = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "Identity")


def require_torch():
    """Import and return ``torch``, or raise a :class:`ModelError` saying how to install it."""
    try:
        import torch
    except ImportError:
        raise ModelError("PyTorch is needed for this (importing nn.Module models, fine-tuning, "
                         "training the examples) but is not installed; install it with "
                         "pip install 'spine[torch]'") from None
    return torch


def _class_name(module) -> str:
    cls = type(module)
    if cls.__module__.startswith("torch.nn"):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _where(path: str) -> str:
    return f"layer {path!r}" if path else "the top-level module"


def _array(tensor) -> np.ndarray:
    return tensor.detach().to("cpu").double().numpy().copy()


def _pair(value, what: str, where: str) -> int:
    """An int, or a tuple of two equal ints, as one int."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ModelError(f"{where}: {what} {tuple(value)} is not the same in both "
                             f"directions; spine supports square {what}s only")
        value = value[0]
    return int(value)


def _flatten_layers(module, path, nn, out, seen):
    """Append ``(path, leaf module)`` of ``module``'s layers in execution order to ``out``."""
    if id(module) in seen:
        raise ModelError(f"{_where(path)} ({_class_name(module)}) contains itself")
    if isinstance(module, nn.Sequential):
        seen = seen | {id(module)}
        for name, child in module.named_children():
            _flatten_layers(child, f"{path}.{name}" if path else name, nn, out, seen)
        return
    spine_layers = getattr(module, "spine_layers", None)
    if callable(spine_layers):
        seen = seen | {id(module)}
        names = {id(child): name for name, child in module.named_modules() if name}
        layers = list(spine_layers())
        for index, child in enumerate(layers):
            if not isinstance(child, nn.Module):
                raise ModelError(f"{_where(path)} ({_class_name(module)}): spine_layers() item "
                                 f"{index} is a {type(child).__name__}, not an nn.Module")
            name = names.get(id(child), f"spine_layers()[{index}]")
            _flatten_layers(child, f"{path}.{name}" if path else name, nn, out, seen)
        return
    out.append((path, module))


def _unsupported(path, module, reason=None) -> ModelError:
    text = f"{_where(path)} ({_class_name(module)}) is not supported"
    if reason:
        return ModelError(f"{text}: {reason}")
    if len(list(module.children())):
        text += (" (a container other than nn.Sequential: give it a spine_layers() method "
                 "returning its layers in execution order)")
    return ModelError(f"{text}; supported: {', '.join(SUPPORTED_LAYERS)}")


def _convert_lstm(path, module, next_is_lstm):
    if module.bidirectional:
        raise _unsupported(path, module, "bidirectional LSTMs are not supported; use "
                           "bidirectional=False")
    hidden = module.hidden_size
    proj = int(getattr(module, "proj_size", 0) or 0)
    layers = []
    for k in range(module.num_layers):
        w_ih = _array(getattr(module, f"weight_ih_l{k}"))
        w_hh = _array(getattr(module, f"weight_hh_l{k}"))
        if module.bias:
            b_ih = _array(getattr(module, f"bias_ih_l{k}"))
            b_hh = _array(getattr(module, f"bias_hh_l{k}"))
        else:
            b_ih = np.zeros(4 * hidden)
            b_hh = np.zeros(4 * hidden)
        w_hr = _array(getattr(module, f"weight_hr_l{k}")) if proj else None
        last = k == module.num_layers - 1
        layers.append(LSTM(w_ih, w_hh, b_ih, b_hh,
                           return_sequences=(not last) or next_is_lstm, w_hr=w_hr))
    return layers


def _convert_conv(path, module):
    where = _where(path)
    if module.groups != 1:
        raise _unsupported(path, module, f"groups={module.groups}; only groups=1 is supported")
    if _pair(module.dilation, "dilation", where) != 1:
        raise _unsupported(path, module, "dilation must be 1")
    if module.padding_mode != "zeros":
        raise _unsupported(path, module, f"padding_mode={module.padding_mode!r}; only 'zeros' "
                           f"is supported")
    kernel = _pair(module.kernel_size, "kernel", where)
    stride = _pair(module.stride, "stride", where)
    padding = module.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        if stride != 1 or kernel % 2 == 0:
            raise _unsupported(path, module, "padding='same' is supported only with stride 1 "
                               "and an odd kernel; give the padding as an int")
        padding = (kernel - 1) // 2
    else:
        padding = _pair(padding, "padding", where)
    weight = _array(module.weight)
    bias = _array(module.bias) if module.bias is not None else np.zeros(weight.shape[0])
    return Conv2d(weight, bias, stride=stride, padding=padding)


def _convert_maxpool(path, module):
    where = _where(path)
    kernel = _pair(module.kernel_size, "kernel", where)
    stride = module.stride if module.stride is not None else kernel
    stride = _pair(stride, "stride", where)
    if (kernel, stride) != (2, 2) or _pair(module.padding, "padding", where) != 0 \
            or _pair(module.dilation, "dilation", where) != 1 or module.ceil_mode \
            or module.return_indices:
        raise _unsupported(path, module, "only nn.MaxPool2d(2) (2x2 window, stride 2, no "
                           "padding, floor mode) is supported")
    return MaxPool2d()


def from_torch(module, input_shape, name: str = "model") -> FloatModel:
    """Convert a PyTorch network into a :class:`~host.floatmodel.FloatModel`.

    Parameters
    ----------
    module : torch.nn.Module
        An ``nn.Sequential`` (nested allowed), a module with a ``spine_layers()`` method
        listing its layers in execution order, or a single supported layer.  See the module
        docstring for the supported layers.  The weights are copied; the module is not changed.
    input_shape : sequence of int
        Shape of one input sample, without the batch dimension: ``(features,)`` for a
        ``Linear`` first layer, ``(T, input_size)`` for an LSTM, ``(C, H, W)`` for a Conv2d.
    name : str
        Name of the returned model.

    Returns
    -------
    FloatModel
        The layer graph with float64 copies of the weights.

    Raises
    ------
    ModelError
        If PyTorch is missing, a layer is not supported (the message names the layer's path in
        the module, e.g. ``'features.3'``, and its class), the model has no layers, or the
        layer sizes do not chain from ``input_shape``.
    """
    torch = require_torch()
    nn = torch.nn
    if not isinstance(module, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got a {type(module).__name__}")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ModelError(f"input_shape must be a sequence of positive integers (one sample, "
                         f"no batch dimension), not {input_shape!r}") from None
    if not shape or min(shape) < 1:
        raise ModelError(f"input_shape must be a sequence of positive integers (one sample, "
                         f"no batch dimension), not {input_shape!r}")
    leaves = []
    _flatten_layers(module, "", nn, leaves, frozenset())
    skipped = tuple(getattr(nn, cls) for cls in _SKIPPED if hasattr(nn, cls))
    leaves = [(path, m) for path, m in leaves if not isinstance(m, skipped)]
    layers = []
    for index, (path, leaf) in enumerate(leaves):
        if isinstance(leaf, nn.Linear):
            weight = _array(leaf.weight)
            bias = _array(leaf.bias) if leaf.bias is not None else np.zeros(weight.shape[0])
            layers.append(Linear(weight, bias))
        elif isinstance(leaf, nn.LSTM):
            next_is_lstm = index + 1 < len(leaves) and isinstance(leaves[index + 1][1], nn.LSTM)
            layers.extend(_convert_lstm(path, leaf, next_is_lstm))
        elif isinstance(leaf, nn.Conv2d):
            layers.append(_convert_conv(path, leaf))
        elif isinstance(leaf, nn.ReLU):
            layers.append(ReLU())
        elif isinstance(leaf, nn.MaxPool2d):
            layers.append(_convert_maxpool(path, leaf))
        elif isinstance(leaf, nn.Flatten):
            if (leaf.start_dim, leaf.end_dim) != (1, -1):
                raise _unsupported(path, leaf, "only nn.Flatten() with start_dim=1, end_dim=-1 "
                                   "is supported")
            layers.append(Flatten())
        else:
            raise _unsupported(path, leaf)
    if not layers:
        raise ModelError(f"{_class_name(module)} has no layers spine can run; supported: "
                         f"{', '.join(SUPPORTED_LAYERS)}")
    return FloatModel(name, shape, layers)


_STATE_DICT_HELP = (
    "spine needs the nn.Module itself (its architecture), not only its weights. Fix: build the "
    "module, call module.load_state_dict(...) and then host.torch_import.from_torch(module, "
    "input_shape), or save the whole module with torch.save({'model': module, 'input_shape': "
    "[...]}, path)")


def load_torch_checkpoint(path, input_shape=None) -> FloatModel:
    """Load a PyTorch checkpoint file holding a whole ``nn.Module`` and convert it.

    The file is read with ``torch.load(..., weights_only=False)``, which unpickles arbitrary
    Python objects and can run code: **only load files you trust**.  The module's class must be
    importable (defined in an installed package or a module on ``sys.path``) when loading.

    Parameters
    ----------
    path : str or Path
        A file written by ``torch.save(module, path)`` or by
        ``torch.save({"model": module, "input_shape": [...], "name": "..."}, path)`` (``name``
        optional).
    input_shape : sequence of int, optional
        One sample's input shape (no batch dimension); overrides the file's ``input_shape``.
        Required when the file holds a bare module.

    Returns
    -------
    FloatModel
        The converted model, named after the file's ``name`` entry or the file stem.

    Raises
    ------
    ModelError
        If PyTorch is missing, the file is missing or unreadable, it holds a bare
        ``state_dict`` (weights without architecture), no input shape is known, or
        :func:`from_torch` rejects the module.
    """
    torch = require_torch()
    path = Path(path)
    where = f"PyTorch checkpoint {str(path)!r}"
    if not path.is_file():
        raise ModelError(f"{where} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"{where} refers to a class that cannot be imported ({error}); make "
                         f"the module that defines the network importable (on sys.path) "
                         f"before loading") from None
    except Exception as error:  # torch.load raises many unrelated types
        raise ModelError(f"{where} is not a readable PyTorch file ({type(error).__name__}: "
                         f"{error})") from None
    name = path.stem
    file_shape = None
    if isinstance(content, dict):
        if isinstance(content.get("model"), torch.nn.Module):
            file_shape = content.get("input_shape")
            name = str(content.get("name", name))
            content = content["model"]
        elif content and all(isinstance(v, torch.Tensor) for v in content.values()):
            raise ModelError(f"{where} holds a bare state_dict ({len(content)} tensors). "
                             f"{_STATE_DICT_HELP}")
        elif any(k in content for k in ("state_dict", "model_state_dict")):
            raise ModelError(f"{where} holds a training checkpoint with a state_dict but no "
                             f"module. {_STATE_DICT_HELP}")
    if not isinstance(content, torch.nn.Module):
        raise ModelError(f"{where} holds a {type(content).__name__}, not an nn.Module or a "
                         f"{{'model': module, 'input_shape': [...]}} dict. {_STATE_DICT_HELP}")
    shape = input_shape if input_shape is not None else file_shape
    if shape is None:
        raise ModelError(f"{where}: the input shape is unknown; pass input_shape (one sample, "
                         f"no batch dimension, e.g. (64,) or (1, 8, 8)) or save the module as "
                         f"{{'model': module, 'input_shape': [...]}}")
    try:
        return from_torch(content, shape, name=name)
    except ModelError as error:
        raise ModelError(f"{where}: {error}") from None
