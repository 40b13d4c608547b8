"""The golden model against independent float references, within stated bounds.

References take the *same* shared, quantized weights and quantized inputs as floats, so the
only differences are the golden model's own roundings:

* sparse matrix-vector product (scipy.sparse): at most half an LSB of the activation format
  (one rounding of the exact accumulator);
* conv (torch.nn.functional.conv2d) and max-pool: the same half LSB;
* sigmoid/tanh tables: :func:`host.activations.error_bound`;
* LSTM (torch.nn.LSTM): the per-step bound derived in :func:`lstm_error_bound`;
* stacked LSTMs with a projection (torch.nn.LSTM(num_layers=L, proj_size=P)): the same
  bound carried through the layers (:func:`stacked_error_bound`);
* product shift p > 0 (scipy.sparse): half an LSB plus less than one accumulator LSB
  ``2**-(act.frac + weight.frac - p)`` per non-zero weight of the row (each floored product).
"""

import numpy as np
import pytest
import scipy.sparse

from host.activations import TableSpec, error_bound, lookup
from host.compressed import (QConv2d, QLSTM, QLinear, CompressedModel, SparseMatrix, acc_frac,
                             check_product_shift, requant_shift)
from host.encoding import encode
from host.fixedpoint import Format, quantize, round_shift
from host.golden import (Diagnostics, GoldenModel, shifted_products_sum, spmv,
                         spmv_accumulate)

ACT = Format(16, 10)


def random_matrix(rng, rows, cols, density, n_pe=4, bits=4, wfmt=Format(16, 13),  # noqa: B008
                  bias_scale=0.5, weight_scale=1.0):
    codebook = np.zeros(1 << bits, dtype=np.int64)
    codebook[1:] = quantize(rng.uniform(-weight_scale, weight_scale, (1 << bits) - 1), wfmt)
    idx = (rng.random((rows, cols)) < density) * rng.integers(1, 1 << bits, (rows, cols))
    bias = quantize(rng.uniform(-bias_scale, bias_scale, rows), Format(32, ACT.frac + wfmt.frac))
    return SparseMatrix(encode(idx, n_pe, index_bits=bits), codebook, wfmt, bias), idx


def dequantized(matrix: SparseMatrix, idx):
    weights = matrix.codebook[idx] * matrix.weight_format.scale
    bias = matrix.bias * 2.0 ** -(ACT.frac + matrix.weight_format.frac)
    return weights, bias


@pytest.mark.parametrize("rows, cols, n_pe, density", [
    (1, 1, 1, 1.0), (37, 53, 8, 0.2), (64, 17, 3, 0.9), (100, 300, 16, 0.05), (9, 40, 64, 0.3),
])
def test_spmv_matches_scipy_within_half_lsb(rows, cols, n_pe, density):
    rng = np.random.default_rng(rows * cols)
    matrix, idx = random_matrix(rng, rows, cols, density, n_pe)
    x = quantize(rng.uniform(-1, 1, (20, cols)) * (rng.random((20, cols)) < 0.6), ACT)
    weights, bias = dequantized(matrix, idx)
    reference = (scipy.sparse.csr_matrix(weights) @ (x * ACT.scale).T).T + bias
    for relu in (False, True):
        got = spmv(matrix, x, ACT, 32, relu) * ACT.scale
        expected = np.maximum(reference, 0) if relu else reference
        assert np.abs(got - np.clip(expected, ACT.min_value, ACT.max_value)).max() \
            <= ACT.scale / 2 + 1e-12


def test_spmv_saturates_and_wraps_like_fixed_width_hardware():
    rng = np.random.default_rng(1)
    matrix, idx = random_matrix(rng, 8, 64, 1.0, 2, wfmt=Format(16, 2))
    x = np.full((1, 64), ACT.max_int)
    got = spmv(matrix, x, ACT, 32)
    exact = matrix.codebook[idx] @ x[0] + matrix.bias
    wrapped = ((exact + 2**31) % 2**32) - 2**31
    expected = np.clip((wrapped + 2) >> 2, ACT.min_int, ACT.max_int)
    assert np.array_equal(got[0], expected)


@pytest.mark.parametrize("function", ["sigmoid", "tanh"])
@pytest.mark.parametrize("fmt", [Format(16, 10), Format(16, 8), Format(12, 6)])
def test_tables_within_error_bound(function, fmt):
    q = np.arange(fmt.min_int, fmt.max_int + 1)
    got = lookup(function, q, fmt) * fmt.scale
    x = q * fmt.scale
    reference = 1 / (1 + np.exp(-x)) if function == "sigmoid" else np.tanh(x)
    bound = error_bound(function, fmt)
    assert np.abs(got - reference).max() <= bound
    if fmt.frac >= 8:
        assert bound < 0.01


def lstm_error_bound(w_hh, c_peak, steps, spec=TableSpec()):  # noqa: B008
    """Bound on |h_golden - h_float| after ``steps`` steps (see the module docstring).

    Per step, with s = 1 LSB and tau the table bounds: e_z <= s/2 + |W_hh|_inf e_h;
    gate errors e_sig <= tau_sig + e_z/4, e_g <= tau_tanh + e_z;
    e_c' <= e_c + c_peak e_sig + e_g + e_sig + s/2  (|f|, |i| <= 1);
    e_h' <= tau_tanh + e_c' + e_sig + s/2.
    """
    s = ACT.scale
    tau_sig, tau_tanh = error_bound("sigmoid", ACT, spec), error_bound("tanh", ACT, spec)
    norm = np.abs(w_hh).sum(axis=1).max()
    e_h = e_c = 0.0
    for _ in range(steps):
        e_z = s / 2 + norm * e_h
        e_sig, e_g = tau_sig + e_z / 4, tau_tanh + e_z
        e_c = e_c + c_peak * e_sig + e_g + e_sig + s / 2
        e_h = tau_tanh + e_c + e_sig + s / 2
    return e_h


@pytest.mark.parametrize("input_size, hidden, steps, n_pe", [(5, 7, 6, 4), (8, 1, 8, 8),
                                                             (3, 16, 6, 5)])
def test_lstm_matches_torch_within_derived_bound(input_size, hidden, steps, n_pe):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(hidden)
    matrix, idx = random_matrix(rng, 4 * hidden, input_size + hidden, 0.6, n_pe, bits=6,
                                wfmt=Format(16, 14), bias_scale=0.3,
                                weight_scale=0.6 / (input_size + hidden))
    model = CompressedModel("lstm", (steps, input_size),
                            [QLSTM(matrix, input_size, hidden)], n_pe, ACT)
    x = quantize(rng.uniform(-1, 1, (10, steps, input_size)), ACT)
    golden = GoldenModel(model)
    h_golden = golden.forward_int(x) * ACT.scale
    assert golden.diagnostics.saturations == 0

    weights, bias = dequantized(matrix, idx)
    lstm = torch.nn.LSTM(input_size, hidden, batch_first=True).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(weights[:, :input_size]))
        lstm.weight_hh_l0.copy_(torch.from_numpy(weights[:, input_size:]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(bias))
        lstm.bias_hh_l0.zero_()
        out, (h_n, c_n) = lstm(torch.from_numpy(x * ACT.scale))
    # Peak |c| of the reference over all steps, from torch's LSTMCell run step by step.
    cell = torch.nn.LSTMCell(input_size, hidden).double()
    with torch.no_grad():
        cell.weight_ih.copy_(lstm.weight_ih_l0)
        cell.weight_hh.copy_(lstm.weight_hh_l0)
        cell.bias_ih.copy_(lstm.bias_ih_l0)
        cell.bias_hh.zero_()
        h_c = None
        c_peak = 0.0
        for t in range(steps):
            h_c = cell(torch.from_numpy(x[:, t] * ACT.scale), h_c)
            c_peak = max(c_peak, float(h_c[1].abs().max()))
        assert np.allclose(h_c[0].numpy(), h_n[0].numpy())
    bound = lstm_error_bound(weights[:, input_size:], c_peak, steps)
    error = np.abs(h_golden - h_n[0].numpy()).max()
    assert error <= bound, (error, bound)
    assert bound < 0.3, "bound too loose to mean anything (h lies in (-1, 1))"
    assert error > 0, "identical results would mean no fixed point was exercised"


@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 0), (3, 1, 1), (3, 2, 1),
                                                     (5, 1, 2), (5, 2, 0), (3, 2, 0)])
def test_conv_and_pool_match_torch(kernel, stride, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(kernel * 10 + stride)
    c_in, c_out, size = 3, 5, 9
    matrix, idx = random_matrix(rng, c_out, c_in * kernel * kernel, 0.5, 4)
    layer = QConv2d(matrix, c_in, kernel, stride, padding, relu=True)
    model = CompressedModel("conv", (c_in, size, size), [layer], 4, ACT)
    x = quantize(rng.uniform(-1, 1, (4, c_in, size, size)), ACT)
    got = GoldenModel(model).forward_int(x) * ACT.scale
    weights, bias = dequantized(matrix, idx)
    reference = torch.nn.functional.conv2d(
        torch.from_numpy(x * ACT.scale), torch.from_numpy(weights.reshape(c_out, c_in, kernel,
                                                                          kernel)),
        torch.from_numpy(bias), stride=stride, padding=padding).relu().numpy()
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= ACT.scale / 2 + 1e-12
    if got.shape[2] >= 2:
        from host.compressed import QMaxPool2d
        pooled = GoldenModel(model).layer_forward(QMaxPool2d(), (got / ACT.scale).astype(int))
        ref_pool = torch.nn.functional.max_pool2d(torch.from_numpy(got), 2).numpy()
        assert np.array_equal(pooled * ACT.scale, ref_pool)


def test_golden_reads_the_encoded_bytes():
    """Changing one encoded entry's weight index changes the golden output: the model runs
    on the encoding, not on a dense copy."""
    rng = np.random.default_rng(5)
    matrix, _ = random_matrix(rng, 6, 6, 1.0, 2)
    model = CompressedModel("m", (6,), [QLinear(matrix)], 2, ACT)
    x = quantize(rng.uniform(0.5, 1, (1, 6)), ACT)
    before = GoldenModel(model).forward_int(x)
    entries = matrix.encoded.entries[0]
    entries[0] = (entries[0] & 0xF0) | ((entries[0] & 0x0F) % 15 + 1)
    matrix.__dict__.pop("weights_csr", None)
    after = GoldenModel(model).forward_int(x)
    assert not np.array_equal(before, after)


def test_lstm_uses_the_model_table_spec():
    """A model with a non-default table shape gets its own tables: the golden LSTM step must
    equal a direct computation with lookup() on that spec (regression: lookups once used the
    default spec with the model's tables)."""
    from host.activations import lookup as table_lookup
    from host.fixedpoint import requantize, round_shift, saturate
    rng = np.random.default_rng(11)
    spec = TableSpec(index_bits=6, range_log2=2)
    matrix, _ = random_matrix(rng, 4 * 3, 2 + 3, 0.8, 2)
    model = CompressedModel("l", (1, 2), [QLSTM(matrix, 2, 3)], 2, ACT, table_spec=spec)
    x = quantize(rng.uniform(-4, 4, (6, 1, 2)), ACT)
    h = GoldenModel(model).forward_int(x)
    z = requantize(matrix.weights_csr @ np.concatenate([x[:, 0], np.zeros((6, 3), int)], 1).T
                   + matrix.bias[:, None], matrix.weight_format.frac, ACT).T
    i, f, g, o = (z[:, k * 3:(k + 1) * 3] for k in range(4))
    sig = lambda v: table_lookup("sigmoid", v, ACT, spec)
    c = saturate(round_shift(sig(i) * table_lookup("tanh", g, ACT, spec), ACT.frac), ACT)
    expected = saturate(round_shift(sig(o) * table_lookup("tanh", c, ACT, spec), ACT.frac), ACT)
    assert np.array_equal(h, expected)


def stacked_error_bound(layers, c_peaks, steps, spec=TableSpec()):  # noqa: B008
    """Bound on |output_golden - output_float| of the last layer after ``steps`` steps.

    ``layers``: per layer ``(W_ih, W_hh, W_hr or None)`` as floats; ``c_peaks``: per layer peak
    |c| of the float reference.  Per step, with input error e_x (0 for the quantized inputs,
    else the previous layer's output error at that step): e_z <= s/2 + |W_ih|_inf e_x +
    |W_hh|_inf e_r; the gate, cell and h terms as in :func:`lstm_error_bound`; with a
    projection e_r = s/2 + |W_hr|_inf e_h (one more rounding of the exact accumulator), else
    e_r = e_h.
    """
    s = ACT.scale
    tau_sig, tau_tanh = error_bound("sigmoid", ACT, spec), error_bound("tanh", ACT, spec)
    e_x = np.zeros(steps)
    for (w_ih, w_hh, w_hr), c_peak in zip(layers, c_peaks):
        n_ih, n_hh = np.abs(w_ih).sum(axis=1).max(), np.abs(w_hh).sum(axis=1).max()
        n_hr = np.abs(w_hr).sum(axis=1).max() if w_hr is not None else None
        e_r = e_c = 0.0
        out = np.zeros(steps)
        for t in range(steps):
            e_z = s / 2 + n_ih * e_x[t] + n_hh * e_r
            e_sig, e_g = tau_sig + e_z / 4, tau_tanh + e_z
            e_c = e_c + c_peak * e_sig + e_g + e_sig + s / 2
            e_h = tau_tanh + e_c + e_sig + s / 2
            e_r = e_h if n_hr is None else s / 2 + n_hr * e_h
            out[t] = e_r
        e_x = out
    return e_x[-1]


@pytest.mark.parametrize("num_layers, proj, hidden, steps", [(2, 0, 7, 6), (1, 3, 6, 8),
                                                             (3, 4, 5, 5)])
def test_stacked_projected_lstm_matches_torch_within_bound(num_layers, proj, hidden, steps):
    """Golden model of L stacked LSTMs (with projection P) against float64
    torch.nn.LSTM(num_layers=L, proj_size=P) carrying the same shared, quantized weights."""
    torch = pytest.importorskip("torch")
    from host.floatmodel import LSTM
    rng = np.random.default_rng(100 * num_layers + proj)
    inputs, n_pe = 5, 3
    state = proj or hidden
    qlayers, floats, torch_w = [], [], []
    for k in range(num_layers):
        cols = (inputs if k == 0 else state) + state
        matrix, idx = random_matrix(rng, 4 * hidden, cols, 0.6, n_pe, bits=6,
                                    wfmt=Format(16, 14), bias_scale=0.3,
                                    weight_scale=0.6 / cols)
        w, b = dequantized(matrix, idx)
        w_ih, w_hh = w[:, :cols - state], w[:, cols - state:]
        projection, w_hr = None, None
        if proj:
            projection, pidx = random_matrix(rng, proj, hidden, 0.7, n_pe, bits=6,
                                             wfmt=Format(16, 14), bias_scale=0.0,
                                             weight_scale=1.5 / hidden)
            w_hr = dequantized(projection, pidx)[0]
        qlayers.append(QLSTM(matrix, cols - state, hidden, k < num_layers - 1, projection))
        floats.append(LSTM(w_ih, w_hh, b, np.zeros_like(b), True, w_hr))
        torch_w.append((w_ih, w_hh, b, w_hr))
    model = CompressedModel("stack", (steps, inputs), qlayers, n_pe, ACT)
    x = quantize(rng.uniform(-1, 1, (10, steps, inputs)), ACT)
    golden = GoldenModel(model)
    got = golden.forward_int(x) * ACT.scale
    assert got.shape == (10, state)
    assert golden.diagnostics.saturations == 0

    net = torch.nn.LSTM(inputs, hidden, num_layers=num_layers, proj_size=proj,
                        batch_first=True).double()
    with torch.no_grad():
        for k, (w_ih, w_hh, b, w_hr) in enumerate(torch_w):
            getattr(net, f"weight_ih_l{k}").copy_(torch.from_numpy(w_ih))
            getattr(net, f"weight_hh_l{k}").copy_(torch.from_numpy(w_hh))
            getattr(net, f"bias_ih_l{k}").copy_(torch.from_numpy(b))
            getattr(net, f"bias_hh_l{k}").zero_()
            if proj:
                getattr(net, f"weight_hr_l{k}").copy_(torch.from_numpy(w_hr))
        _, (h_n, _) = net(torch.from_numpy(x * ACT.scale))
    # Peak |c| per layer from the float model (tests/test_floatmodel.py checks it against
    # torch.nn.LSTM); its last output must equal torch's here too.
    seq, c_peaks = x * ACT.scale, []
    for layer in floats:
        seq, cs = layer.sequences(seq)
        c_peaks.append(float(np.abs(cs).max()))
    assert np.allclose(seq[:, -1], h_n[-1].numpy())
    bound = stacked_error_bound([(f.w_ih, f.w_hh, f.w_hr) for f in floats], c_peaks, steps)
    error = np.abs(got - h_n[-1].numpy()).max()
    print(f"L={num_layers} P={proj} H={hidden} T={steps}: |golden - torch| = {error:.4f} "
          f"<= bound {bound:.4f} (LSB {ACT.scale:.4f})")
    assert error <= bound, (error, bound)
    assert bound < 0.5, "bound too loose to mean anything"
    assert error > 0


# --- product shift (model-level `product_shift` p) ------------------------------------------
#
# Every product is floored to acc_frac = act.frac + weight.frac - p fraction bits, so it loses
# less than one LSB 2**-acc_frac: a row of n non-zero weights is low by less than
# n * 2**-acc_frac before the requantization's half-LSB rounding.  Bound per output:
#     |out - reference| <= ACT.scale / 2 + n_row * 2**-acc_frac      (before clipping)


def dense_floor_reference(matrix, idx, x, p):
    """Independent integer reference: dense per-product floor, exact sums (int64)."""
    weights = matrix.codebook[idx]                                   # (rows, cols)
    terms = (x[:, None, :] * weights[None]) >> p                     # (B, rows, cols)
    return terms.sum(axis=2) + matrix.bias


@pytest.mark.parametrize("rows, cols, n_pe, density, p", [
    (1, 1, 1, 1.0, 1), (37, 53, 8, 0.2, 7), (64, 17, 3, 0.9, 13), (9, 40, 64, 0.3, 20),
])
def test_spmv_product_shift_matches_float_within_derived_bound(rows, cols, n_pe, density, p):
    rng = np.random.default_rng(rows + cols + p)
    wfmt = Format(16, 13) if p <= 13 else Format(24, 21)
    matrix, idx = random_matrix(rng, rows, cols, density, n_pe, wfmt=wfmt)
    acc_frac = ACT.frac + wfmt.frac - p
    matrix.bias = quantize(matrix.bias * 2.0 ** -(ACT.frac + wfmt.frac), Format(48, acc_frac))
    x = quantize(rng.uniform(-1, 1, (20, cols)) * (rng.random((20, cols)) < 0.6), ACT)
    weights = matrix.codebook[idx] * wfmt.scale
    reference = (scipy.sparse.csr_matrix(weights) @ (x * ACT.scale).T).T \
        + matrix.bias * 2.0 ** -acc_frac
    n_row = np.count_nonzero(matrix.codebook[idx], axis=1)
    bound = ACT.scale / 2 + n_row * 2.0 ** -acc_frac + 1e-12
    assert np.array_equal(spmv(matrix, x, ACT, 48, product_shift=p),
                          np.clip(round_shift(dense_floor_reference(matrix, idx, x, p),
                                              wfmt.frac - p), ACT.min_int, ACT.max_int))
    for relu in (False, True):
        got = spmv(matrix, x, ACT, 48, relu, product_shift=p) * ACT.scale
        expected = np.clip(np.maximum(reference, 0) if relu else reference,
                           ACT.min_value, ACT.max_value)
        assert np.all(np.abs(got - expected) <= bound)
    # Each floor loses [0, 1) accumulator LSB: the sum is low by [0, n_row) LSBs.
    exact = (matrix.weights_csr @ x.T).T * 2.0 ** -p
    loss = exact - shifted_products_sum(matrix, x, p)
    assert np.all(loss >= 0) and np.all(loss < np.maximum(n_row, 1e-9))


def test_product_shift_zero_is_the_exact_path():
    rng = np.random.default_rng(5)
    matrix, idx = random_matrix(rng, 40, 70, 0.3, 4)
    x = quantize(rng.uniform(-1, 1, (9, 70)), ACT)
    exact = (matrix.weights_csr @ x.T).T
    assert np.array_equal(shifted_products_sum(matrix, x, 0), exact)
    assert np.array_equal(spmv_accumulate(matrix, x, 32, product_shift=0), exact + matrix.bias)
    assert np.array_equal(spmv(matrix, x, ACT, 32, product_shift=0), spmv(matrix, x, ACT, 32))


def test_product_shift_wraps_at_narrow_accumulators_and_counts_overflows():
    rng = np.random.default_rng(6)
    matrix, idx = random_matrix(rng, 16, 64, 1.0, 4, bias_scale=0.0)
    x = np.full((3, 64), ACT.max_int)
    exact = dense_floor_reference(matrix, idx, x, 9)
    diag = Diagnostics()
    got = spmv_accumulate(matrix, x, 16, diag, product_shift=9)
    assert np.array_equal(got, ((exact + 2**15) % 2**16) - 2**15)
    assert diag.accumulator_overflows == np.count_nonzero(np.abs(exact) >= 2**15) > 0
    assert diag.peak_accumulator == np.abs(exact).max()


def test_golden_model_applies_the_model_product_shift_to_every_layer():
    rng = np.random.default_rng(7)
    m1, i1 = random_matrix(rng, 12, 20, 0.5, 4)
    m2, i2 = random_matrix(rng, 5, 12, 0.5, 4)
    model = CompressedModel("two", (20,), [QLinear(m1, relu=True), QLinear(m2)], 4, ACT,
                            product_shift=6)
    x = quantize(rng.uniform(-1, 1, (7, 20)), ACT)
    h = np.clip(round_shift(dense_floor_reference(m1, i1, x, 6), 13 - 6), ACT.min_int,
                ACT.max_int)
    h = np.maximum(h, 0)
    out = np.clip(round_shift(dense_floor_reference(m2, i2, h, 6), 13 - 6), ACT.min_int,
                  ACT.max_int)
    assert np.array_equal(GoldenModel(model).forward_int(x), out)
    assert model.requant_shift(m1) == 7 and model.acc_frac(m1) == ACT.frac + 7


def test_product_shift_validation_messages():
    rng = np.random.default_rng(8)
    m1, _ = random_matrix(rng, 4, 4, 1.0, 1)                 # Q2.13 weights
    with pytest.raises(ValueError, match=r"layer 0 \(linear\).*product shift 14 exceeds the "
                                         r"13 fraction bits.*--product-shift"):
        CompressedModel("m", (4,), [QLinear(m1)], 1, ACT, product_shift=14)
    with pytest.raises(ValueError, match="must be a non-negative integer, not -1"):
        CompressedModel("m", (4,), [QLinear(m1)], 1, ACT, product_shift=-1)
    with pytest.raises(ValueError, match=r"`product_shift` must be from 0 to 31 .* not 32"):
        check_product_shift(32, ACT, 16)
    with pytest.raises(ValueError, match="exceeds the 13 fraction bits"):
        requant_shift(Format(16, 13), 14)
    assert requant_shift(Format(16, 13), 13) == 0
    assert acc_frac(ACT, Format(16, 13), 5) == ACT.frac + 8


def test_shifted_products_chunks_agree(monkeypatch):
    """Batch chunks (a few entries' worth at a time) give the same sums as one chunk."""
    import host.golden as golden
    rng = np.random.default_rng(9)
    matrix, idx = random_matrix(rng, 30, 50, 0.4, 4)
    x = quantize(rng.uniform(-1, 1, (23, 50)), ACT)
    whole = shifted_products_sum(matrix, x, 7)
    monkeypatch.setattr(golden, "PRODUCT_CHUNK", matrix.nonzeros() * 3)   # 3 inputs a chunk
    assert np.array_equal(shifted_products_sum(matrix, x, 7), whole)
    assert np.array_equal(whole, dense_floor_reference(matrix, idx, x, 7) - matrix.bias)
