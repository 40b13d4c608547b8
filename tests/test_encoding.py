"""EIE encoding: round trips, the padding rule and field layout, checked entry by entry."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from host.encoding import (encode, entry_layout_fields, pad_groups, pe_rows, pointer_fields,
                           pointer_words)


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


@settings(max_examples=150, deadline=None)
@given(index_matrices(), st.sampled_from([2, 4, 6, 8]), st.integers(1, 5),
       st.sampled_from([1, 2]))
def test_pad_groups(case, n_pe, run_bits, group):
    """Lockstep groups: equal lengths per group and column, the same decoded matrix, every
    entry of a column on a distinct local row below ceil(rows / n_pe), runs in range, and
    padding only where a group-mate is longer."""
    matrix, bits = case
    enc = encode(matrix, n_pe, index_bits=bits, run_bits=run_bits)
    padded = pad_groups(enc, group)
    assert np.array_equal(padded.decode(), matrix)
    lengths = padded.column_lengths()
    for g in range(0, n_pe, group):
        assert (lengths[g:g + group] == lengths[g:g + group].max(axis=0)).all()
        assert (lengths[g:g + group].max(axis=0)
                == enc.column_lengths()[g:g + group].max(axis=0)).all()
    depth = -(-matrix.shape[0] // n_pe)
    max_run = (1 << run_bits) - 1
    for pe in range(n_pe):
        index, run = padded.fields(pe)
        assert run.max(initial=0) <= max_run
        row, col, _ = padded.coordinates(pe)
        local = (row - pe) // n_pe
        assert local.max(initial=0) < depth
        assert len(set(zip(col.tolist(), local.tolist()))) == len(local), "distinct rows"
        # Only index-0 entries were added.
        assert np.count_nonzero(index) == np.count_nonzero(enc.fields(pe)[0])
    if group == 1:
        assert padded is enc


def test_pad_groups_rejects_bad_groups():
    enc = encode(np.eye(6, dtype=int), 3)
    with pytest.raises(ValueError, match="`group` must be a positive integer, not 0"):
        pad_groups(enc, 0)
    with pytest.raises(ValueError, match=r"`group` \(2\) must divide the PE count \(3\)"):
        pad_groups(enc, 2)


def test_pad_groups_uses_rows_past_a_short_pe():
    """5 rows on 4 PEs: PE 0 owns 2 local rows, PE 1 one; a column with both of PE 0's rows
    set pads PE 1 onto its local row 1 (global row 5, past the matrix) and still decodes."""
    m = np.zeros((5, 1), dtype=int)
    m[0, 0] = m[4, 0] = 3
    padded = pad_groups(encode(m, 4), 2)
    assert list(padded.column_lengths()[:, 0]) == [2, 2, 0, 0]
    row, _, index = padded.coordinates(1)
    assert list(row) == [1, 5] and list(index) == [0, 0]
    assert np.array_equal(padded.decode(), m)


def test_pointer_words():
    """start | length << start_bits per column; an empty column's start is 0."""
    assert pointer_fields(1024, 32) == (10, 6)
    assert pointer_fields(1, 1) == (1, 1)
    words = pointer_words([0, 3, 3, 7], 10)
    assert list(words) == [0 | 3 << 10, 0, 3 | 4 << 10]
