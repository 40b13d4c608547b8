"""Bundled example models: three small digit classifiers ready to compress and run.

=============  ============================================================  =========
name           layers (input shape)                                          density
=============  ============================================================  =========
digits-mlp     Linear 64-128, ReLU, Linear 128-64, ReLU, Linear 64-10 (64,)  0.2
digits-lstm    LSTM 8-64 over 8 steps, Linear 64-10 on h_T (8, 8)            0.25
digits-cnn     Conv 1-16, ReLU, pool, Conv 16-64, ReLU, pool, pool, Linear   0.25
               64-10 (1, 8, 8); 3x3 kernels, padding 1, 2x2 max-pools
=============  ============================================================  =========

All three are trained on scikit-learn's 8x8 digits (:func:`host.datasets.digits_split`) by
``python -m host.examples.train_digits`` and shipped as float32 ``.npz`` files beside this
module.  Their weights were pruned during training (Deep Compression's prune-and-retrain) with
the load-balance-aware masks of an 8-PE engine at the recommended density, then retrained
through 4-bit weight sharing, so the shipped float weights are already sparse, sit close to
their shared values and compress without retraining; ``README.md`` here says exactly how they
were made and what "float accuracy" means for them.  ``load_example(name)`` returns the model,
the data in its input layout and the recommended compression settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from ..datasets import digits_inputs, digits_split
from ..errors import ModelError
from ..floatmodel import FloatModel, load_npz

__all__ = [
    "EXAMPLES",
    "Example",
    "ExampleSpec",
    "example_names",
    "example_path",
    "load_example",
]


@dataclass(frozen=True)
class ExampleSpec:
    """Registry entry of one bundled model.

    Attributes
    ----------
    name : str
        The example's name, e.g. ``"digits-mlp"``.
    file : str
        Its ``.npz`` file name inside the ``host.examples`` package.
    layout : str
        Input layout for :func:`host.datasets.digits_inputs`.
    description : str
        One line describing the architecture.
    defaults : dict
        Recommended compression settings: ``density`` (fraction of weights kept per layer) and
        ``bits`` (weight-index width; ``2**bits - 1`` shared non-zero values per layer).
    pes : int
        Number of PEs the load-balance-aware pruning during training was done for.
    """

    name: str
    file: str
    layout: str
    description: str
    defaults: dict = field(default_factory=dict)
    pes: int = 8


EXAMPLES: dict[str, ExampleSpec] = {
    spec.name: spec for spec in (
        ExampleSpec("digits-mlp", "digits-mlp.npz", "mlp",
                    "MLP 64-128-64-10 with ReLU on the flat 8x8 image",
                    {"density": 0.2, "bits": 4}),
        ExampleSpec("digits-lstm", "digits-lstm.npz", "lstm",
                    "LSTM (8 inputs, 64 hidden) over the 8 image rows, Linear 64-10 on h_T",
                    {"density": 0.25, "bits": 4}),
        ExampleSpec("digits-cnn", "digits-cnn.npz", "cnn",
                    "Conv 1-16 3x3 pad 1, ReLU, MaxPool 2, Conv 16-64 3x3 pad 1, ReLU, "
                    "MaxPool 2, MaxPool 2, Flatten, Linear 64-10 on the 1x8x8 image",
                    {"density": 0.25, "bits": 4}),
    )
}
"""The bundled examples by name."""


@dataclass
class Example:
    """A loaded example: the model, the digits split in its input layout and its settings.

    Attributes
    ----------
    name : str
        Example name.
    model : FloatModel
        The trained float model (weights as shipped, already pruned).
    x_train, x_test : ndarray of float64
        Inputs in the model's layout, ``(n, *model.input_shape)``.
    y_train, y_test : ndarray of int64
        Labels 0..9.
    defaults : dict
        Recommended compression settings (``density``, ``bits``); a fresh copy.
    description : str
        The architecture in one line.
    pes : int
        PE count the training-time balanced pruning used.
    """

    name: str
    model: FloatModel
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    defaults: dict
    description: str = ""
    pes: int = 8


def example_names() -> list[str]:
    """Names of the bundled examples, sorted."""
    return sorted(EXAMPLES)


def _spec(name: str) -> ExampleSpec:
    if name not in EXAMPLES:
        raise ModelError(f"no bundled example named {name!r}; the examples are "
                         f"{', '.join(example_names())}")
    return EXAMPLES[name]


def example_path(name: str):
    """The bundled ``.npz`` file of example ``name`` (a ``pathlib.Path`` when installed
    normally, or a ``Traversable`` inside a zip; :func:`load_example` handles both)."""
    return resources.files(__name__) / _spec(name).file


def load_example(name: str) -> Example:
    """Load a bundled example model and the digits data in its input layout.

    Parameters
    ----------
    name : str
        One of :func:`example_names`, e.g. ``"digits-lstm"``.

    Returns
    -------
    Example
        The model (read with :func:`host.floatmodel.load_npz`), the train and test splits
        shaped for it, and the recommended compression settings.

    Raises
    ------
    ModelError
        For an unknown name (the message lists the valid ones) or a missing / damaged file.
    """
    spec = _spec(name)
    with resources.as_file(example_path(name)) as path:
        model = load_npz(path)
    split = digits_split()
    return Example(
        name=spec.name,
        model=model,
        x_train=digits_inputs(split.x_train, spec.layout),
        y_train=split.y_train,
        x_test=digits_inputs(split.x_test, spec.layout),
        y_test=split.y_test,
        defaults=dict(spec.defaults),
        description=spec.description,
        pes=spec.pes,
    )
