"""Turn the MODEL argument of the CLIs into a float model and, where known, its data.

MODEL is the name of a bundled example (``digits-mlp``, ``digits-lstm``, ``digits-cnn``), a
NumPy ``.npz`` in the schema of :mod:`host.floatmodel`, or a PyTorch checkpoint (``.pt``,
``.pth``) holding an ``nn.Module``.  Evaluation and calibration data come with the bundled
examples; for other models pass an ``.npz`` with arrays ``x`` (inputs, float, shape
``(N, *input_shape)``) and ``y`` (integer labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelError
from .floatmodel import FloatModel, load_npz

__all__ = ["ModelSource", "resolve_model", "load_data"]


@dataclass
class ModelSource:
    model: FloatModel
    train: tuple | None = None
    test: tuple | None = None
    defaults: dict = field(default_factory=dict)
    origin: str = ""


def load_data(path, input_shape) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` and ``y`` from an ``.npz`` and check them against ``input_shape``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise ModelError(f"data file {str(path)!r} must hold arrays 'x' and 'y' "
                                 f"(has {sorted(data.files)})")
            x, y = np.asarray(data["x"], dtype=np.float64), np.asarray(data["y"])
    except (OSError, ValueError) as error:
        raise ModelError(f"data file {str(path)!r} cannot be read as .npz ({error})") from None
    if x.shape[1:] != tuple(input_shape) or len(y) != len(x):
        raise ModelError(f"data file {str(path)!r}: x has shape {x.shape} and y {y.shape}; "
                         f"the model needs x (N, {', '.join(map(str, input_shape))}) and y (N,)")
    if not np.all(np.isfinite(x)):
        raise ModelError(f"data file {str(path)!r}: x holds NaN or infinite values")
    return x, y.astype(np.int64)


def resolve_model(name_or_path: str, *, input_shape=None) -> ModelSource:
    """Load MODEL (see the module docstring)."""
    from .examples import example_names, load_example
    if name_or_path in example_names():
        example = load_example(name_or_path)
        return ModelSource(example.model, (example.x_train, example.y_train),
                           (example.x_test, example.y_test), dict(example.defaults),
                           f"bundled example {name_or_path}")
    path = Path(name_or_path)
    if not path.exists():
        raise ModelError(f"model {name_or_path!r} is neither a bundled example "
                         f"({', '.join(example_names())}) nor an existing file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return ModelSource(load_npz(path), origin=str(path))
    if suffix in (".pt", ".pth", ".ckpt"):
        from .torch_import import load_torch_checkpoint
        return ModelSource(load_torch_checkpoint(path, input_shape), origin=str(path))
    if suffix == ".spn":
        raise ModelError(f"{str(path)!r} is already a compressed spine package; host.compress "
                         f"takes a float model (.npz, .pt) or an example name")
    raise ModelError(f"model file {str(path)!r}: unknown type {suffix or '(no suffix)'!r}; "
                     f"give a .npz, a PyTorch .pt/.pth, or an example name")
