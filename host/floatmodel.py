"""Trained float models: the layer graph spine imports, its float forward pass and ``.npz`` files.

A :class:`FloatModel` is an input shape plus a list of layers:

* :class:`Linear` ``y = W x + b``; ``W`` is ``(out, in)`` as in ``torch.nn.Linear``.
* :class:`LSTM` one layer, PyTorch gate order (i, f, g, o), both bias vectors, optional
  projection ``w_hr`` (LSTMP as in ESE and ``torch.nn.LSTM(proj_size=P)``: ``r_t = W_hr h_t`` is
  the recurrent state and the output); input ``(T, I)``; returns the last output (``h_T`` of
  shape ``(H,)``, or ``r_T`` ``(P,)``), or the whole sequence ``(T, H or P)`` when
  ``return_sequences`` (to feed a stacked LSTM).
* :class:`Conv2d` on ``(C, H, W)`` maps, square kernel, stride, zero padding.
* :class:`ReLU`, :class:`MaxPool2d` (2x2, stride 2, floor), :class:`Flatten` (C, H, W order).

The float forward pass here is plain NumPy and serves as the independent reference that the
fixed-point golden model is tested against.

``.npz`` schema (``save_npz`` / ``load_npz``): an entry ``spine_float_model`` holding a JSON
string ``{"format": 1, "name": str, "input_shape": [...], "layers": [{"kind": ..., ...}]}``
and for layer ``i`` the float arrays ``"{i}.weight"``, ``"{i}.bias"`` (Linear, Conv2d) or
``"{i}.w_ih"``, ``"{i}.w_hh"``, ``"{i}.b_ih"``, ``"{i}.b_hh"`` and, with a projection only,
``"{i}.w_hr"`` (LSTM).  Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelError

__all__ = [
    "Linear", "LSTM", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "FloatModel",
    "load_npz", "save_npz", "NPZ_FORMAT",
]

NPZ_FORMAT = 1


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Linear:
    """Fully connected layer; ``weight`` ``(out, in)``, ``bias`` ``(out,)``, float."""

    weight: np.ndarray
    bias: np.ndarray
    kind = "linear"

    def output_shape(self, shape):
        if tuple(shape) != (self.weight.shape[1],):
            raise ModelError(f"linear layer expects input shape ({self.weight.shape[1]},), "
                             f"gets {tuple(shape)}: add a flatten layer or fix the sizes")
        return (self.weight.shape[0],)

    def forward(self, x):
        return x @ self.weight.T + self.bias

    def arrays(self):
        return {"weight": self.weight, "bias": self.bias}


@dataclass
class LSTM:
    """One LSTM layer in PyTorch's convention.

    ``w_ih`` ``(4H, I)``, ``w_hh`` ``(4H, S)``, ``b_ih`` and ``b_hh`` ``(4H,)``; gate rows in
    the order input, forget, cell (g), output.  ``w_hr`` ``(P, H)`` (optional) is the projection
    of ``torch.nn.LSTM(proj_size=P)``: ``r_t = W_hr (o * tanh(c_t))`` is both the recurrent
    state and the output, so ``S = P``; without it ``S = H`` and the state is ``h_t``.
    Initial state and cell are zero.
    """

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    return_sequences: bool = False
    w_hr: np.ndarray | None = None
    kind = "lstm"

    @property
    def hidden(self) -> int:
        """Cells H."""
        return self.w_ih.shape[0] // 4

    @property
    def input_size(self) -> int:
        return self.w_ih.shape[1]

    @property
    def proj_size(self) -> int:
        """Projection size P (0: no projection)."""
        return 0 if self.w_hr is None else self.w_hr.shape[0]

    @property
    def output_size(self) -> int:
        """Recurrent state / output size S: P with a projection, else H."""
        return self.proj_size or self.hidden

    def output_shape(self, shape):
        if len(shape) != 2 or shape[1] != self.input_size:
            raise ModelError(f"LSTM layer expects input shape (T, {self.input_size}), "
                             f"gets {tuple(shape)}")
        return (shape[0], self.output_size) if self.return_sequences else (self.output_size,)

    def sequences(self, x):
        """Outputs (``h``, or ``r`` with a projection) and cell states of every step: arrays
        ``(B, T, S)`` and ``(B, T, H)``."""
        batch, steps, _ = x.shape
        hsz = self.hidden
        h = np.zeros((batch, self.output_size))
        c = np.zeros((batch, hsz))
        hs, cs = [], []
        for t in range(steps):
            z = x[:, t] @ self.w_ih.T + h @ self.w_hh.T + self.b_ih + self.b_hh
            i, f, g, o = (z[:, k * hsz:(k + 1) * hsz] for k in range(4))
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            if self.w_hr is not None:
                h = h @ self.w_hr.T
            hs.append(h)
            cs.append(c)
        return np.stack(hs, axis=1), np.stack(cs, axis=1)

    def output_of(self, hs):
        """The layer output given :meth:`sequences`' hidden states."""
        return hs if self.return_sequences else hs[:, -1]

    def forward(self, x):
        return self.output_of(self.sequences(x)[0])

    def arrays(self):
        arrays = {"w_ih": self.w_ih, "w_hh": self.w_hh, "b_ih": self.b_ih, "b_hh": self.b_hh}
        if self.w_hr is not None:
            arrays["w_hr"] = self.w_hr
        return arrays


@dataclass
class Conv2d:
    """2-D convolution; ``weight`` ``(C_out, C_in, k, k)``, ``bias`` ``(C_out,)``."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int = 1
    padding: int = 0
    kind = "conv2d"

    @property
    def kernel(self) -> int:
        return self.weight.shape[2]

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.weight.shape[1]:
            raise ModelError(f"conv2d layer expects input shape ({self.weight.shape[1]}, H, W), "
                             f"gets {tuple(shape)}")
        _, height, width = shape
        k, s, p = self.kernel, self.stride, self.padding
        oh, ow = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
        if oh < 1 or ow < 1:
            raise ModelError(f"conv2d kernel {k} does not fit a {height}x{width} input")
        return (self.weight.shape[0], oh, ow)

    def forward(self, x):
        patches = im2col(x, self.kernel, self.stride, self.padding)  # (B, P, Ci*k*k)
        _, oh, ow = self.output_shape(x.shape[1:])
        out = patches @ self.weight.reshape(self.weight.shape[0], -1).T + self.bias
        return out.transpose(0, 2, 1).reshape(x.shape[0], -1, oh, ow)

    def arrays(self):
        return {"weight": self.weight, "bias": self.bias}


def im2col(x, kernel: int, stride: int, padding: int):
    """Input patches of ``x`` ``(B, C, H, W)`` as ``(B, OH*OW, C*k*k)``, (c, ky, kx) order."""
    batch, chans, height, width = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (height + 2 * padding - kernel) // stride + 1
    ow = (width + 2 * padding - kernel) // stride + 1
    cols = np.empty((batch, chans, kernel, kernel, oh, ow), dtype=x.dtype)
    for ky in range(kernel):
        for kx in range(kernel):
            cols[:, :, ky, kx] = xp[:, :, ky:ky + stride * oh:stride, kx:kx + stride * ow:stride]
    return cols.reshape(batch, chans * kernel * kernel, oh * ow).transpose(0, 2, 1)


@dataclass
class ReLU:
    kind = "relu"

    def output_shape(self, shape):
        return tuple(shape)

    def forward(self, x):
        return np.maximum(x, 0)

    def arrays(self):
        return {}


@dataclass
class MaxPool2d:
    """2x2 max-pool with stride 2 (odd edges dropped, as ``torch.nn.MaxPool2d(2)``)."""

    kind = "maxpool2d"

    def output_shape(self, shape):
        if len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
            raise ModelError(f"maxpool2d expects a (C, H, W) input of at least 2x2, "
                             f"gets {tuple(shape)}")
        return (shape[0], shape[1] // 2, shape[2] // 2)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x[:, :, :h // 2 * 2, :w // 2 * 2]
        return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    def arrays(self):
        return {}


@dataclass
class Flatten:
    kind = "flatten"

    def output_shape(self, shape):
        return (int(np.prod(shape)),)

    def forward(self, x):
        return x.reshape(x.shape[0], -1)

    def arrays(self):
        return {}


LAYER_KINDS = {cls.kind: cls for cls in (Linear, LSTM, Conv2d, ReLU, MaxPool2d, Flatten)}


@dataclass
class FloatModel:
    """A trained float network: ``input_shape`` (without batch) and its ``layers``."""

    name: str
    input_shape: tuple
    layers: list = field(default_factory=list)

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.shapes()  # validates the chain of shapes

    def shapes(self) -> list[tuple]:
        """Shape after every layer (first element: the input shape)."""
        shapes = [self.input_shape]
        for index, layer in enumerate(self.layers):
            try:
                shapes.append(tuple(layer.output_shape(shapes[-1])))
            except ModelError as error:
                raise ModelError(f"model {self.name!r}, layer {index} ({layer.kind}): "
                                 f"{error}") from None
        return shapes

    @property
    def output_shape(self):
        return self.shapes()[-1]

    def forward(self, x) -> np.ndarray:
        """Float forward pass of a batch ``x`` of shape ``(B, *input_shape)``."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != self.input_shape:
            raise ModelError(f"model {self.name!r} expects inputs of shape "
                             f"(batch, {', '.join(map(str, self.input_shape))}), "
                             f"gets {x.shape}")
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def layer_outputs(self, x) -> list[np.ndarray]:
        """Float outputs after every layer, for calibrating activation formats."""
        x = np.asarray(x, dtype=np.float64)
        outs = []
        for layer in self.layers:
            x = layer.forward(x)
            outs.append(x)
        return outs


def save_npz(model: FloatModel, path) -> None:
    """Write ``model`` as a ``.npz`` file in the schema of this module."""
    layers_meta = []
    arrays = {}
    for index, layer in enumerate(model.layers):
        meta = {"kind": layer.kind}
        if isinstance(layer, Conv2d):
            meta.update(stride=layer.stride, padding=layer.padding)
        if isinstance(layer, LSTM):
            meta.update(return_sequences=layer.return_sequences)
        layers_meta.append(meta)
        for name, value in layer.arrays().items():
            arrays[f"{index}.{name}"] = np.asarray(value, dtype=np.float32)
    header = {"format": NPZ_FORMAT, "name": model.name, "input_shape": list(model.input_shape),
              "layers": layers_meta}
    np.savez(path, spine_float_model=np.array(json.dumps(header)), **arrays)


def load_npz(path) -> FloatModel:
    """Read a float model written by :func:`save_npz` (or by hand in the same schema).

    Raises
    ------
    ModelError
        If the file is missing, not an ``.npz``, lacks the ``spine_float_model`` header, names
        an unknown layer kind, misses an array, or has inconsistent shapes or non-finite values.
    """
    path = Path(path)
    where = f"model file {str(path)!r}"
    if not path.is_file():
        raise ModelError(f"{where} does not exist; give a .npz / PyTorch file or a bundled "
                         f"example name (digits-mlp, digits-lstm, digits-cnn)")
    try:
        with np.load(path, allow_pickle=False) as data:
            content = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, TypeError) as error:
        raise ModelError(f"{where} is not a readable NumPy .npz file ({error}); "
                         f"re-save it with numpy.savez or host.floatmodel.save_npz") from None
    if "spine_float_model" not in content:
        raise ModelError(f"{where} has no 'spine_float_model' header entry; write it with "
                         f"host.floatmodel.save_npz (schema in docs/models.md)")
    try:
        header = json.loads(str(content["spine_float_model"]))
        if header.get("format") != NPZ_FORMAT:
            raise ModelError(f"{where} has float-model format {header.get('format')!r}; "
                             f"this spine reads format {NPZ_FORMAT}")
        layers = []
        for index, meta in enumerate(header["layers"]):
            kind = meta["kind"]
            if kind not in LAYER_KINDS:
                raise ModelError(f"{where}, layer {index}: unknown kind {kind!r}; supported: "
                                 f"{', '.join(sorted(LAYER_KINDS))}")
            cls = LAYER_KINDS[kind]
            names = {"linear": ("weight", "bias"), "conv2d": ("weight", "bias"),
                     "lstm": ("w_ih", "w_hh", "b_ih", "b_hh")}.get(kind, ())
            params = {}
            for name in names:
                key = f"{index}.{name}"
                if key not in content:
                    raise ModelError(f"{where}, layer {index} ({kind}): array {key!r} missing")
                value = np.asarray(content[key], dtype=np.float64)
                if not np.all(np.isfinite(value)):
                    raise ModelError(f"{where}, array {key!r} holds NaN or infinite values")
                params[name] = value
            if kind == "conv2d":
                params.update(stride=int(meta.get("stride", 1)),
                              padding=int(meta.get("padding", 0)))
            if kind == "lstm":
                params.update(return_sequences=bool(meta.get("return_sequences", False)))
                if f"{index}.w_hr" in content:
                    value = np.asarray(content[f"{index}.w_hr"], dtype=np.float64)
                    if not np.all(np.isfinite(value)):
                        raise ModelError(f"{where}, array '{index}.w_hr' holds NaN or "
                                         f"infinite values")
                    params["w_hr"] = value
            layer = cls(**params)
            _check_param_shapes(layer, f"{where}, layer {index} ({kind})")
            layers.append(layer)
        try:
            return FloatModel(str(header.get("name", path.stem)), tuple(header["input_shape"]),
                              layers)
        except ModelError as error:
            raise ModelError(f"{where}: {error}") from None
    except ModelError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ModelError(f"{where} has a malformed 'spine_float_model' header ({error!r})") \
            from None


def _check_param_shapes(layer, where):
    if isinstance(layer, (Linear, Conv2d)):
        ndim = 2 if isinstance(layer, Linear) else 4
        if layer.weight.ndim != ndim or layer.bias.shape != (layer.weight.shape[0],):
            raise ModelError(f"{where}: weight {layer.weight.shape} / bias {layer.bias.shape} "
                             f"are not a {ndim}-D weight with one bias per output")
        if isinstance(layer, Conv2d) and layer.weight.shape[2] != layer.weight.shape[3]:
            raise ModelError(f"{where}: only square kernels are supported, "
                             f"not {layer.weight.shape[2:]}")
    if isinstance(layer, LSTM):
        four_h = layer.w_ih.shape[0]
        proj = layer.w_hr
        if proj is not None and (proj.ndim != 2 or proj.shape[1] != four_h // 4
                                 or proj.shape[0] < 1):
            raise ModelError(f"{where}: projection w_hr {proj.shape} is not (P, H) with "
                             f"H = {four_h // 4}")
        if (four_h % 4 or layer.w_hh.shape != (four_h, layer.output_size)
                or layer.b_ih.shape != (four_h,) or layer.b_hh.shape != (four_h,)):
            raise ModelError(f"{where}: inconsistent LSTM shapes w_ih {layer.w_ih.shape}, "
                             f"w_hh {layer.w_hh.shape}, b_ih {layer.b_ih.shape}, "
                             f"b_hh {layer.b_hh.shape}")


def weight_matrix(layer) -> np.ndarray | None:
    """The 2-D matrix a layer's weights form on the sparse engine, or None (no weights).

    Linear: ``W`` ``(out, in)``.  Conv2d: ``(C_out, C_in*k*k)``, columns in (c, ky, kx) order
    (matching :func:`im2col`).  LSTM: ``[W_ih | W_hh]`` ``(4H, I + H)``, the stacked matrix
    that multiplies ``[x_t ; h_(t-1)]`` (the projection ``W_hr`` is a second matrix,
    :func:`projection_matrix`).
    """
    if isinstance(layer, Linear):
        return layer.weight
    if isinstance(layer, Conv2d):
        return layer.weight.reshape(layer.weight.shape[0], -1)
    if isinstance(layer, LSTM):
        return np.hstack([layer.w_ih, layer.w_hh])
    return None


def with_weight_matrix(layer, matrix: np.ndarray):
    """A copy of ``layer`` whose weights are replaced by ``matrix`` (see :func:`weight_matrix`)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if isinstance(layer, Linear):
        return Linear(matrix.reshape(layer.weight.shape), layer.bias)
    if isinstance(layer, Conv2d):
        return Conv2d(matrix.reshape(layer.weight.shape), layer.bias, layer.stride,
                      layer.padding)
    if isinstance(layer, LSTM):
        return LSTM(matrix[:, :layer.input_size], matrix[:, layer.input_size:],
                    layer.b_ih, layer.b_hh, layer.return_sequences, layer.w_hr)
    raise TypeError(f"{layer.kind} layers have no weight matrix")


def projection_matrix(layer) -> np.ndarray | None:
    """The projection ``W_hr`` ``(P, H)`` of an LSTM with a projection, else None."""
    return layer.w_hr if isinstance(layer, LSTM) else None


def with_projection_matrix(layer, matrix: np.ndarray):
    """A copy of the LSTM ``layer`` with its projection replaced by ``matrix``."""
    return LSTM(layer.w_ih, layer.w_hh, layer.b_ih, layer.b_hh, layer.return_sequences,
                np.asarray(matrix, dtype=np.float64).reshape(layer.w_hr.shape))
