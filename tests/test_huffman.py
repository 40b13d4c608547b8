"""Tests of host.huffman: canonical Huffman coding of small-alphabet streams."""

from __future__ import annotations

import itertools
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from host.errors import PackageError
from host.huffman import MAX_CODE_LENGTH, HuffmanCode


@st.composite
def streams(draw, max_alphabet: int = 256, max_size: int = 3000):
    """(symbols, alphabet_size): uniform, skewed (Dirichlet) or hand-picked streams."""
    alphabet = draw(st.integers(1, max_alphabet))
    how = draw(st.sampled_from(["list", "dirichlet", "geometric"]))
    if how == "list":
        values = draw(st.lists(st.integers(0, alphabet - 1), max_size=200))
        return np.array(values, dtype=np.int64), alphabet
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = draw(st.integers(0, max_size))
    if how == "dirichlet":
        concentration = draw(st.sampled_from([0.05, 0.3, 1.0, 10.0]))
        p = rng.dirichlet(np.full(alphabet, concentration))
        p = p / p.sum()
        return rng.choice(alphabet, size=size, p=p), alphabet
    p_stop = draw(st.sampled_from([0.02, 0.2, 0.6, 0.95]))
    return np.minimum(rng.geometric(p_stop, size=size) - 1, alphabet - 1), alphabet


def kraft(lengths) -> Fraction:
    return sum((Fraction(1, 2 ** int(n)) for n in lengths if n > 0), Fraction(0))


def entropy_bits(symbols, alphabet: int) -> float:
    """Shannon entropy of the stream's empirical distribution, bits per symbol."""
    counts = np.bincount(symbols, minlength=alphabet).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


# -- round trip and size ------------------------------------------------------------------------


@settings(deadline=None)
@given(streams())
def test_round_trip_and_size(stream):
    symbols, alphabet = stream
    code = HuffmanCode.from_symbols(symbols, alphabet)
    data = code.encode(symbols)
    bits = int(sum(int(code.lengths[s]) for s in symbols))
    assert code.encoded_bits(symbols) == bits
    assert len(data) == (bits + 7) // 8
    decoded = code.decode(data, len(symbols))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, symbols)
    # A code rebuilt from the stored lengths alone decodes the same bytes.
    again = HuffmanCode.from_lengths(code.lengths.copy())
    assert again == code
    np.testing.assert_array_equal(again.decode(data, len(symbols)), symbols)


def test_bit_packing_is_msb_first_and_zero_padded():
    # Counts 1, 1, 2 -> lengths 2, 2, 1 -> canonical codes: symbol 2 "0", 0 "10", 1 "11".
    code = HuffmanCode.from_counts([1, 1, 2])
    assert code.lengths.tolist() == [2, 2, 1]
    assert code.codes.tolist() == [0b10, 0b11, 0b0]
    # 0 1 2 2 -> 10 11 0 0 -> 1011 0000 (4 padding zeros)
    assert code.encode([0, 1, 2, 2]) == bytes([0b10110000])
    # 9 symbols "0" -> 9 bits -> 2 bytes
    assert code.encode([2] * 9) == b"\x00\x00"


@settings(deadline=None)
@given(streams())
def test_average_length_within_entropy_bound(stream):
    """Huffman's bound: H <= average length < H + 1 when at least two symbols are used.

    With one used symbol H = 0 and its code has 1 bit (average exactly H + 1).  The test
    streams are far too short for the 24-bit length limit to take effect, so the code is plain
    Huffman and the bound holds.
    """
    symbols, alphabet = stream
    assume(len(symbols) > 0)
    code = HuffmanCode.from_symbols(symbols, alphabet)
    average = code.encoded_bits(symbols) / len(symbols)
    entropy = entropy_bits(symbols, alphabet)
    if len(np.unique(symbols)) == 1:
        assert average == 1.0
    else:
        assert entropy - 1e-9 <= average < entropy + 1


@given(streams())
def test_kraft_sum(stream):
    symbols, alphabet = stream
    code = HuffmanCode.from_symbols(symbols, alphabet)
    used = len(np.unique(symbols))
    assert np.count_nonzero(code.lengths) == used
    total = kraft(code.lengths)
    assert total <= 1
    if used >= 2:
        assert total == 1  # a Huffman code is complete
    elif used == 1:
        assert code.lengths.max() == 1


@given(streams(max_alphabet=40))
def test_codes_are_canonical_and_prefix_free(stream):
    symbols, alphabet = stream
    code = HuffmanCode.from_symbols(symbols, alphabet)
    used = [s for s in range(alphabet) if code.lengths[s]]
    words = {s: format(int(code.codes[s]), f"0{int(code.lengths[s])}b") for s in used}
    for a, b in itertools.permutations(used, 2):
        assert not words[b].startswith(words[a])
    # Canonical: ordered by (length, symbol), the codes count up (left-justified).
    order = sorted(used, key=lambda s: (int(code.lengths[s]), s))
    justified = [int(code.codes[s]) << (MAX_CODE_LENGTH - int(code.lengths[s])) for s in order]
    assert justified == sorted(justified)
    if order:
        assert code.codes[order[0]] == 0


def _brute_force_cost(counts, max_length):
    """Least sum(count * length) over all prefix-code length assignments (tiny alphabets)."""
    used = [c for c in counts if c > 0]
    best = None
    for lengths in itertools.product(range(1, max_length + 1), repeat=len(used)):
        if kraft(lengths) <= 1:
            cost = sum(c * n for c, n in zip(used, lengths))
            best = cost if best is None else min(best, cost)
    return best


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=5), st.integers(1, 5))
def test_optimal_against_brute_force(counts, max_length):
    """Heap Huffman and the length-limited package-merge are both optimal."""
    used = sum(1 for c in counts if c > 0)
    assume(used >= 2 and used <= 2**max_length)
    code = HuffmanCode.from_counts(counts, max_length=max_length)
    assert code.max_length <= max_length
    cost = sum(c * int(n) for c, n in zip(counts, code.lengths))
    assert cost == _brute_force_cost(counts, max_length)


def test_length_limit_with_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    # Plain Huffman would give these a 39-bit code.
    code = HuffmanCode.from_counts(fib)
    assert code.max_length == MAX_CODE_LENGTH
    assert kraft(code.lengths) == 1
    symbols = np.arange(40).repeat(3)
    np.testing.assert_array_equal(code.decode(code.encode(symbols), symbols.size), symbols)
    # Lengths never grow with the count.
    assert np.all(np.diff(code.lengths.astype(int)) <= 0)


def test_max_length_too_small_rejected():
    with pytest.raises(ValueError, match="max_length"):
        HuffmanCode.from_counts([1] * 5, max_length=2)


def test_deterministic_tie_breaking():
    assert HuffmanCode.from_counts([1, 1, 1]).lengths.tolist() == [2, 2, 1]
    assert HuffmanCode.from_counts([5] * 4).lengths.tolist() == [2] * 4
    counts = np.random.default_rng(1).integers(0, 4, size=200)
    assert HuffmanCode.from_counts(counts) == HuffmanCode.from_counts(counts.copy())


# -- edge cases ---------------------------------------------------------------------------------


def test_empty_stream():
    code = HuffmanCode.from_symbols(np.zeros(0, dtype=np.uint8), 16)
    assert code.lengths.tolist() == [0] * 16
    assert code.max_length == 0
    assert code.encode([]) == b""
    assert code.encoded_bits([]) == 0
    assert code.decode(b"", 0).shape == (0,)
    with pytest.raises(PackageError, match="no symbols"):
        code.decode(b"\x00", 1)
    with pytest.raises(PackageError, match="left over"):
        code.decode(b"\x00", 0)


@pytest.mark.parametrize("alphabet", [1, 2, 200, 256])
def test_single_distinct_symbol_gets_one_bit(alphabet):
    symbols = np.full(13, alphabet - 1)
    code = HuffmanCode.from_symbols(symbols, alphabet)
    assert code.lengths[alphabet - 1] == 1
    assert np.count_nonzero(code.lengths) == 1
    data = code.encode(symbols)
    assert data == b"\x00\x00"
    np.testing.assert_array_equal(code.decode(data, 13), symbols)


def test_full_alphabet_uniform():
    symbols = np.arange(256).repeat(4)
    code = HuffmanCode.from_symbols(symbols, 256)
    assert code.lengths.tolist() == [8] * 256
    assert code.encode(symbols) == bytes(symbols.astype(np.uint8))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="alphabet"):
        HuffmanCode.from_symbols([0], 257)
    with pytest.raises(ValueError, match="alphabet"):
        HuffmanCode.from_symbols([0], 0)
    with pytest.raises(ValueError, match="outside the alphabet"):
        HuffmanCode.from_symbols([0, 4], 4)
    with pytest.raises(ValueError, match="outside the alphabet"):
        HuffmanCode.from_symbols([-1], 4)
    with pytest.raises(TypeError):
        HuffmanCode.from_symbols([0.5], 4)
    code = HuffmanCode.from_symbols([0, 1], 4)
    with pytest.raises(ValueError, match="no code"):
        code.encode([2])
    with pytest.raises(ValueError, match="no code"):
        code.encoded_bits([0, 3])


# -- rejecting bad input from files -------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths",
    [
        [1, 1, 1],  # Kraft sum 3/2
        [1, 2, 2, 2],  # 5/4
        [0] * 200 + [8] * 56 + [1],  # 257 entries
        [25, 1],  # longer than 24 bits
        [-1, 1],
        [255, 1],
        [],
        [[1, 1]],
        np.array([1.0, 1.0]),
        np.array([True, True]),
    ],
)
def test_invalid_lengths_rejected(lengths):
    with pytest.raises(PackageError, match="Huffman code lengths"):
        HuffmanCode.from_lengths(lengths)
    with pytest.raises(PackageError):
        HuffmanCode(np.asarray(lengths))


def test_where_names_the_lengths_in_errors():
    with pytest.raises(PackageError, match=r"^m\.spn: layer fc1: .*Kraft.*host\.compress"):
        HuffmanCode.from_lengths([1, 1, 1], where="m.spn: layer fc1")


def test_incomplete_code_accepted_but_invalid_pattern_rejected():
    code = HuffmanCode.from_lengths([2, 2, 2, 0])  # "11" is unassigned
    assert kraft(code.lengths) == Fraction(3, 4)
    assert code.decode(bytes([0b00011000]), 3).tolist() == [0, 1, 2]
    with pytest.raises(PackageError, match="bit offset 6 .*no valid code"):
        code.decode(bytes([0b00011011]), 4)


@settings(deadline=None)
@given(streams(max_size=500))
def test_truncated_data_rejected(stream):
    symbols, alphabet = stream
    assume(len(symbols) > 0)
    code = HuffmanCode.from_symbols(symbols, alphabet)
    data = code.encode(symbols)
    for end in range(len(data)):
        with pytest.raises(PackageError, match="ends after|no symbols|empty"):
            code.decode(data[:end], len(symbols), where="s")


def test_extra_bytes_and_padding_rejected():
    code = HuffmanCode.from_counts([1, 1, 2])
    data = code.encode([0, 1, 2, 2])  # 6 bits
    with pytest.raises(PackageError, match="left over"):
        code.decode(data + b"\x00", 4)
    with pytest.raises(PackageError, match="padding"):
        code.decode(bytes([data[0] | 1]), 4)


def test_truncation_message():
    code = HuffmanCode.from_counts([1, 1, 2])
    data = code.encode([0] * 8)  # 16 bits
    with pytest.raises(PackageError, match=r"^x: the data \(1 bytes\) ends after 4 of 8"):
        code.decode(data[:1], 8, where="x")


# -- speed --------------------------------------------------------------------------------------


@pytest.mark.parametrize("alphabet", [16, 256])
def test_million_symbols_round_trip_quickly(alphabet):
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.full(alphabet, 0.3))
    symbols = rng.choice(alphabet, size=1_000_000, p=p / p.sum()).astype(np.uint8)
    code = HuffmanCode.from_symbols(symbols, alphabet)
    start = time.perf_counter()
    data = code.encode(symbols)
    decoded = code.decode(data, symbols.size)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(decoded, symbols)
    # About 0.5 s on a laptop; the generous bound only catches a per-bit Python loop.
    assert elapsed < 10
