"""EIE encoding: round trips, the padding rule and field layout, checked entry by entry."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from host.encoding import encode, entry_layout_fields, pe_rows


@st.composite
def index_matrices(draw):
    rows = draw(st.integers(1, 70))
    cols = draw(st.integers(1, 12))
    bits = draw(st.integers(1, 8))
    density = draw(st.sampled_from([0.0, 0.02, 0.2, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    m = (rng.random((rows, cols)) < density) * rng.integers(1, 1 << bits, (rows, cols))
    return m, bits


@settings(max_examples=150, deadline=None)
@given(index_matrices(), st.integers(1, 9), st.integers(1, 8))
def test_decode_inverts_encode(case, n_pe, run_bits):
    matrix, bits = case
    enc = encode(matrix, n_pe, index_bits=bits, run_bits=run_bits)
    assert np.array_equal(enc.decode(), matrix)


@settings(max_examples=150, deadline=None)
@given(index_matrices(), st.integers(1, 9), st.integers(1, 5))
def test_padding_rule(case, n_pe, run_bits):
    """Walk every PE's column by hand: each entry's run says how many zeros it skips; a
    padding entry appears exactly when a gap exceeds the run field, and only then."""
    matrix, bits = case
    enc = encode(matrix, n_pe, index_bits=bits, run_bits=run_bits)
    max_run = (1 << run_bits) - 1
    expected_padding = 0
    for pe in range(n_pe):
        sub = matrix[pe::n_pe]
        index, run = enc.fields(pe)
        ptr = enc.col_ptr[pe]
        for col in range(matrix.shape[1]):
            position = -1
            nonzero_rows = list(np.flatnonzero(sub[:, col]))
            for k in range(ptr[col], ptr[col + 1]):
                assert 0 <= run[k] <= max_run
                position += run[k] + 1
                if index[k] == 0:
                    assert run[k] == max_run, "padding entries carry the longest run"
                    assert sub[position, col] == 0
                else:
                    assert nonzero_rows.pop(0) == position
                    assert index[k] == sub[position, col]
            assert not nonzero_rows
        # Independent count of padding: per gap g, floor(g / (max_run + 1)) paddings.
        for col in range(matrix.shape[1]):
            prev = -1
            for r in np.flatnonzero(sub[:, col]):
                expected_padding += (r - prev - 1) // (max_run + 1)
                prev = r
    assert enc.padding_count() == expected_padding


def test_long_run_example():
    """150 zeros then a 3: nine padding entries (16 rows each) and a run of 6."""
    m = np.zeros((200, 1), dtype=int)
    m[150, 0] = 3
    enc = encode(m, 1)
    assert list(enc.entries[0]) == [0xF0] * 9 + [0x63]
    assert list(enc.col_ptr[0]) == [0, 10]


def test_entry_layout_and_pe_rows():
    assert entry_layout_fields(4, 4) == {"weight_index": 4, "zero_run": 4}
    assert [pe_rows(10, 4, p) for p in range(4)] == [3, 3, 2, 2]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`n_pe` must be a positive integer, not 0"):
        encode(np.zeros((2, 2), int), 0)
    with pytest.raises(ValueError, match="weight indices must be in 0..15"):
        encode(np.full((2, 2), 16), 1)


@given(arrays(np.int64, (5, 3), elements=st.integers(0, 15)))
def test_column_lengths_count_entries(matrix):
    enc = encode(matrix, 2)
    assert enc.column_lengths().sum() == sum(len(e) for e in enc.entries)
