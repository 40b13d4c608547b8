"""Canonical Huffman coding of small-alphabet symbol streams.

spine Huffman-codes two streams of the EIE encoding, for package size and transfer size: the
weight-index stream (alphabet ``2**B`` with ``B <= 8``) and the relative-index (zero-run) stream
(alphabet ``2**R`` with ``R <= 8``).

The code is *canonical*: it is fully defined by the code length of each symbol, so a package
stores only the lengths (one ``uint8`` per symbol).  Codes are assigned in order of increasing
length, ties broken by increasing symbol value; the first code is all zeros and each following
code is the previous one plus one, shifted left by the growth in length (the DEFLATE rule).

Bit stream
    Codes are packed most-significant-bit first: the first bit of the first code is bit 7 of
    byte 0.  The last byte is zero-padded, so a stream of ``n`` bits takes ``ceil(n / 8)``
    bytes.  No symbol count is stored: the caller keeps it.

Limits
    Alphabets of 1 to 256 symbols; code lengths of 1 to :data:`MAX_CODE_LENGTH` (24) bits.
    Plain Huffman can exceed 24 bits for very skewed, Fibonacci-like counts (which needs a
    stream of a few hundred thousand symbols); such codes are rebuilt with the package-merge
    algorithm, which gives the optimal code under the length limit.  A stream that uses
    exactly one symbol gets a 1-bit code ``0``; a stream that uses no symbol gets an empty
    code (all lengths 0).

Decoding
    :meth:`HuffmanCode.decode` is table-driven and vectorised except for one Python step per
    symbol: it computes the code length at every bit offset with NumPy (a direct table for
    codes up to 16 bits, a binary search over the canonical code intervals above), then
    follows the chain of code starts from offset 0.  About 0.2 to 0.4 s per million symbols.
"""

from __future__ import annotations

import heapq
import operator
from dataclasses import dataclass, field

import numpy as np

from .errors import PackageError

__all__ = ["MAX_ALPHABET", "MAX_CODE_LENGTH", "HuffmanCode"]

#: Largest alphabet (symbols 0..255, so decoded symbols fit in ``uint8``).
MAX_ALPHABET = 256
#: Longest code in bits.  The decoder reads 32-bit big-endian words at any bit offset 0..7 of
#: a byte, so codes must fit in ``32 - 7 = 25`` bits; 24 leaves one bit to spare.
MAX_CODE_LENGTH = 24
#: Longest code for which :meth:`HuffmanCode.decode` uses a direct lookup table
#: (``2**16`` entries of ``uint16``); longer codes use a binary search instead.
_TABLE_BITS = 16

_FIX_HINT = "re-create the package with `python -m host.compress`"


def _huffman_lengths(counts: list[int]) -> list[int]:
    """Unrestricted Huffman code lengths for ``counts`` (at least two non-zero)."""
    lengths = [0] * len(counts)
    # Entries (weight, tie-break id, symbols below).  Leaves take ids 0..n-1 (their symbol),
    # merged nodes take n, n+1, ...: ids are unique, so the lists are never compared and the
    # result does not depend on heap internals.
    heap = [(count, symbol, [symbol]) for symbol, count in enumerate(counts) if count > 0]
    heapq.heapify(heap)
    next_id = len(counts)
    while len(heap) > 1:
        weight_a, _, below_a = heapq.heappop(heap)
        weight_b, _, below_b = heapq.heappop(heap)
        below = below_a + below_b
        for symbol in below:
            lengths[symbol] += 1
        heapq.heappush(heap, (weight_a + weight_b, next_id, below))
        next_id += 1
    return lengths


def _package_merge(counts: list[int], max_length: int) -> list[int]:
    """Optimal code lengths, none above ``max_length``, by package-merge (Larmore-Hirschberg).

    Needs at least two non-zero counts and ``2**max_length >= `` their number.
    """
    used = [symbol for symbol, count in enumerate(counts) if count > 0]
    n_used = len(used)
    unit = np.eye(n_used, dtype=np.int64)
    order = sorted(range(n_used), key=lambda i: (counts[used[i]], used[i]))
    # An item is (weight, how often each used symbol occurs in it).
    leaves = [(counts[used[i]], unit[i]) for i in order]
    current = leaves
    for _ in range(max_length - 1):
        packages = [
            (current[k][0] + current[k + 1][0], current[k][1] + current[k + 1][1])
            for k in range(0, len(current) - 1, 2)
        ]
        # heapq.merge is stable: on equal weights the leaf comes first, deterministically.
        current = list(heapq.merge(leaves, packages, key=operator.itemgetter(0)))
    depth = np.sum([vector for _, vector in current[: 2 * n_used - 2]], axis=0)
    lengths = [0] * len(counts)
    for i, symbol in enumerate(used):
        lengths[symbol] = int(depth[i])
    return lengths


def _check_lengths(lengths, where: str = "Huffman code lengths") -> np.ndarray:
    """Validate code lengths read from a file; return them as a read-only ``uint8`` array."""
    array = np.asarray(lengths)
    if array.ndim != 1 or not 1 <= array.size <= MAX_ALPHABET:
        raise PackageError(
            f"{where}: expected a 1-D array of 1 to {MAX_ALPHABET} entries (one per symbol), "
            f"got shape {array.shape}; the package is corrupted: {_FIX_HINT}"
        )
    if array.dtype.kind not in "iu":
        raise PackageError(
            f"{where}: expected integers, got dtype {array.dtype}; the package is corrupted: "
            f"{_FIX_HINT}"
        )
    bad = np.flatnonzero((array < 0) | (array > MAX_CODE_LENGTH))
    if bad.size:
        symbol = int(bad[0])
        raise PackageError(
            f"{where}: symbol {symbol} has length {int(array[symbol])}, outside "
            f"0..{MAX_CODE_LENGTH} bits; the package is corrupted or from a newer spine: "
            f"{_FIX_HINT} or upgrade spine"
        )
    checked = array.astype(np.uint8)
    used = checked[checked > 0].astype(np.int64)
    # Kraft inequality in exact integers: sum 2**-l <= 1  <=>  sum 2**(24-l) <= 2**24.
    kraft = int(np.sum(np.int64(1) << (MAX_CODE_LENGTH - used)))
    if kraft > 1 << MAX_CODE_LENGTH:
        raise PackageError(
            f"{where}: the lengths violate the Kraft inequality (sum of 2**-length is "
            f"{kraft / (1 << MAX_CODE_LENGTH):.6g} > 1), so no prefix code has them; the package "
            f"is corrupted: {_FIX_HINT}"
        )
    checked.flags.writeable = False
    return checked


@dataclass(frozen=True, eq=False)
class HuffmanCode:
    """A canonical Huffman code over the symbols ``0 .. alphabet_size - 1``.

    Build one with :meth:`from_symbols`, :meth:`from_counts` or (from a file)
    :meth:`from_lengths`; the constructor validates ``lengths`` like :meth:`from_lengths`.

    Attributes
    ----------
    lengths : ndarray of uint8, shape ``(alphabet_size,)``
        Code length in bits of each symbol, 1..24; 0 means the symbol has no code.  Read-only.
    """

    lengths: np.ndarray
    _codes: np.ndarray = field(init=False, repr=False)
    _sorted_symbols: np.ndarray = field(init=False, repr=False)
    _sorted_lengths: np.ndarray = field(init=False, repr=False)
    _ends: np.ndarray = field(init=False, repr=False)
    _table: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lengths = _check_lengths(self.lengths)
        object.__setattr__(self, "lengths", lengths)
        # Canonical order: by length, then by symbol value; unused symbols dropped.
        order = np.lexsort((np.arange(lengths.size), lengths))
        order = order[lengths[order] > 0]
        codes = np.zeros(lengths.size, dtype=np.uint32)
        code = 0
        previous = int(lengths[order[0]]) if order.size else 0
        for symbol in order.tolist():
            length = int(lengths[symbol])
            code <<= length - previous
            codes[symbol] = code
            code += 1
            previous = length
        codes.flags.writeable = False
        object.__setattr__(self, "_codes", codes)
        object.__setattr__(self, "_sorted_symbols", order.astype(np.uint8))
        sorted_lengths = lengths[order].astype(np.int64)
        object.__setattr__(self, "_sorted_lengths", sorted_lengths)
        # Left-justified to max_length bits, canonical codes are increasing and their intervals
        # [code << (M - l), (code + 1) << (M - l)) tile [0, Kraft sum * 2**M) in canonical order,
        # so the code at the head of an M-bit window is found by searching the interval ends.
        top = self.max_length
        ends = (codes[order].astype(np.int64) + 1) << (top - sorted_lengths)
        object.__setattr__(self, "_ends", ends.astype(np.uint32))
        table = None
        if 0 < top <= _TABLE_BITS:
            windows = np.arange(1 << top, dtype=np.uint32)
            table = np.searchsorted(self._ends, windows, side="right").astype(np.uint16)
        object.__setattr__(self, "_table", table)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_counts(cls, counts, *, max_length: int = MAX_CODE_LENGTH) -> HuffmanCode:
        """Build the optimal code for symbol frequencies.

        Parameters
        ----------
        counts : array_like of int, shape ``(alphabet_size,)``
            Occurrences of each symbol, >= 0; ``alphabet_size`` is 1..256.
        max_length : int
            Longest allowed code in bits, 1..24 (default 24), and at least
            ``ceil(log2(number of used symbols))``.

        Returns
        -------
        HuffmanCode
            Heap-built Huffman code (ties broken by symbol value, then by merge order), or, if
            that needs codes longer than ``max_length``, the optimal length-limited code.
        """
        counts = np.asarray(counts)
        if counts.ndim != 1 or not 1 <= counts.size <= MAX_ALPHABET:
            raise ValueError(
                f"`counts` must be 1-D with 1 to {MAX_ALPHABET} entries, not shape {counts.shape}"
            )
        if counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
            raise ValueError("`counts` must hold non-negative integers")
        max_length = operator.index(max_length)
        if not 1 <= max_length <= MAX_CODE_LENGTH:
            raise ValueError(f"`max_length` must be 1..{MAX_CODE_LENGTH} bits, not {max_length}")
        values = [int(c) for c in counts.tolist()]
        n_used = sum(1 for c in values if c > 0)
        if n_used > 1 << max_length:
            raise ValueError(
                f"{n_used} used symbols need codes longer than `max_length` = {max_length} bits"
            )
        lengths = [0] * len(values)
        if n_used == 1:
            lengths[next(s for s, c in enumerate(values) if c > 0)] = 1
        elif n_used > 1:
            lengths = _huffman_lengths(values)
            if max(lengths) > max_length:
                lengths = _package_merge(values, max_length)
        return cls(np.array(lengths, dtype=np.uint8))

    @classmethod
    def from_symbols(cls, symbols, alphabet_size: int, *,
                     max_length: int = MAX_CODE_LENGTH) -> HuffmanCode:
        """Build the optimal code for a symbol stream.

        Parameters
        ----------
        symbols : array_like of int
            The stream (any shape, read in C order); every value in ``0 .. alphabet_size - 1``.
            May be empty, which gives a code with no symbols.
        alphabet_size : int
            Number of symbols, 1..256 (``2**B`` for a B-bit index stream).
        max_length : int
            Longest allowed code in bits, 1..24.

        Returns
        -------
        HuffmanCode
        """
        alphabet_size = operator.index(alphabet_size)
        if not 1 <= alphabet_size <= MAX_ALPHABET:
            raise ValueError(f"`alphabet_size` must be 1..{MAX_ALPHABET}, not {alphabet_size}")
        array = _as_symbol_array(symbols, alphabet_size)
        counts = np.bincount(array, minlength=alphabet_size)
        return cls.from_counts(counts, max_length=max_length)

    @classmethod
    def from_lengths(cls, lengths, *, where: str = "Huffman code lengths") -> HuffmanCode:
        """Rebuild a code from its stored code lengths.

        Parameters
        ----------
        lengths : array_like of int, shape ``(alphabet_size,)``
            Code length in bits per symbol, 0 (unused) or 1..24, typically a ``uint8`` array
            read from a package.
        where : str
            Names the lengths at the start of error messages, e.g.
            ``"model.spn: layer 'fc1' index-stream code lengths"``.

        Raises
        ------
        PackageError
            If the lengths are not 1-D integers of 1..256 entries, lie outside 0..24, or
            violate the Kraft inequality (sum of ``2**-length`` above 1).  An incomplete code
            (sum below 1) is accepted; the decoder rejects its unassigned bit patterns.
        """
        return cls(_check_lengths(lengths, where))

    # -- properties ---------------------------------------------------------------------------

    @property
    def alphabet_size(self) -> int:
        """Number of symbols of the alphabet (1..256)."""
        return int(self.lengths.size)

    @property
    def max_length(self) -> int:
        """Longest code in bits (0 for a code with no symbols)."""
        return int(self.lengths.max())

    @property
    def codes(self) -> np.ndarray:
        """Canonical code of each symbol, right-aligned in ``uint32`` (0 where unused)."""
        return self._codes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HuffmanCode):
            return NotImplemented
        return np.array_equal(self.lengths, other.lengths)

    def __hash__(self) -> int:
        return hash(self.lengths.tobytes())

    # -- coding -------------------------------------------------------------------------------

    def _checked(self, symbols) -> np.ndarray:
        array = _as_symbol_array(symbols, self.alphabet_size)
        if array.size:
            missing = self.lengths[array] == 0
            if missing.any():
                symbol = int(array[np.argmax(missing)])
                raise ValueError(
                    f"symbol {symbol} has no code in this Huffman code (length 0): build the "
                    f"code from the stream it encodes"
                )
        return array

    def encoded_bits(self, symbols) -> int:
        """Size in bits of the encoding of ``symbols`` (before padding to whole bytes)."""
        array = self._checked(symbols)
        return int(self.lengths[array].sum(dtype=np.int64))

    def encode(self, symbols) -> bytes:
        """Encode a stream.

        Parameters
        ----------
        symbols : array_like of int
            Values in ``0 .. alphabet_size - 1``, each with a code; any shape, C order.

        Returns
        -------
        bytes
            The codes packed MSB first, last byte zero-padded: ``ceil(encoded_bits / 8)``
            bytes.
        """
        array = self._checked(symbols)
        lengths = self.lengths[array].astype(np.int64)
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if ends.size else 0
        if total == 0:
            return b""
        starts = ends - lengths
        shift = starts & 7
        # Each code left-aligned in a 32-bit big-endian word starting at its first byte
        # (shift + length <= 7 + 24 <= 32).  Codes own disjoint bits, so summing their bytes
        # per output byte equals OR-ing them; float64 weights are exact for these integers.
        word = self._codes[array].astype(np.int64) << (32 - shift - lengths)
        first = starts >> 3
        n_bytes = (total + 7) >> 3
        out = np.zeros(n_bytes + 3, dtype=np.float64)
        for k in range(4):
            part = (word >> (24 - 8 * k)) & 0xFF
            out += np.bincount(first + k, weights=part, minlength=n_bytes + 3)
        return out[:n_bytes].astype(np.uint8).tobytes()

    def decode(self, data, count: int, *, where: str = "Huffman stream") -> np.ndarray:
        """Decode exactly ``count`` symbols.

        Parameters
        ----------
        data : bytes-like
            An encoding made by :meth:`encode` of a stream of ``count`` symbols.
        count : int
            Number of symbols to decode, >= 0.
        where : str
            Names the stream at the start of error messages, e.g.
            ``"model.spn: layer 'fc1' index stream"``.

        Returns
        -------
        ndarray of uint8, shape ``(count,)``
            The symbols.

        Raises
        ------
        PackageError
            If the data ends before ``count`` symbols, holds a bit pattern that is no code,
            has bytes left over after them, or non-zero padding bits: in every case the data
            does not belong to this code and count (corrupted or mismatched package).  A wrong
            ``count`` is not always caught: zero padding bits can decode as further symbols.
        """
        count = operator.index(count)
        if count < 0:
            raise ValueError(f"`count` must be >= 0, not {count}")
        buf = np.frombuffer(bytes(data), dtype=np.uint8)
        n_bits = 8 * buf.size
        if count == 0:
            self._check_end(buf, 0, count, where)
            return np.zeros(0, dtype=np.uint8)
        if self._sorted_symbols.size == 0:
            raise PackageError(
                f"{where}: {count} symbols expected but the code has no symbols (all "
                f"lengths 0); the package is corrupted: {_FIX_HINT}"
            )
        if buf.size == 0:
            raise PackageError(
                f"{where}: empty, but {count} symbols expected; the package is truncated "
                f"or corrupted: {_FIX_HINT}"
            )
        # The max_length-bit window starting at every bit offset of the data (zeros past the
        # end), from 32-bit big-endian words at every byte.
        top = self.max_length
        padded = np.concatenate([buf, np.zeros(3, dtype=np.uint8)]).astype(np.uint32)
        word = (padded[:-3] << 24) | (padded[1:-2] << 16) | (padded[2:-1] << 8) | padded[3:]
        windows = np.empty((buf.size, 8), dtype=np.uint32)
        for offset in range(8):
            windows[:, offset] = (word << np.uint32(offset)) >> np.uint32(32 - top)
        windows = windows.reshape(-1)
        # Index (canonical order) of the code at each offset; n_used marks "no such code".
        if self._table is not None:
            index = self._table[windows]
        else:
            index = np.searchsorted(self._ends, windows, side="right")
        del windows
        n_used = self._sorted_symbols.size
        # Step to the next code; an invalid pattern steps past the end, which stops the chase.
        invalid_step = n_bits + 1
        step_of = np.append(self._sorted_lengths, invalid_step)
        steps = step_of[index].tolist()
        starts = [0] * count
        position = 0
        done = 0
        try:
            for done in range(count):
                starts[done] = position
                position += steps[position]
            done = count
        except IndexError:
            pass  # position >= n_bits: the previous code was invalid or ran past the end
        if done < count or position > n_bits:
            # The chase stopped in iteration `done` (>= 1, since offset 0 is inside the data),
            # or ran past the end in the last code: the culprit is the code before.
            culprit = done - 1 if done < count else count - 1
            last = starts[culprit]
            if index[last] == n_used:
                raise PackageError(
                    f"{where}: bit offset {last} (byte {last // 8}) holds no valid code "
                    f"(symbol {culprit} of {count}); the package is corrupted: {_FIX_HINT}"
                )
            complete = culprit + 1 if last + step_of[index[last]] <= n_bits else culprit
            raise PackageError(
                f"{where}: the data ({buf.size} bytes) ends after {complete} of {count} "
                f"symbols; the package is truncated or corrupted: {_FIX_HINT}"
            )
        self._check_end(buf, position, count, where)
        positions = np.array(starts, dtype=np.int64)
        return self._sorted_symbols[index[positions]]

    @staticmethod
    def _check_end(buf: np.ndarray, used_bits: int, count: int, where: str) -> None:
        """Reject bytes after the last code and non-zero padding bits."""
        used_bytes = (used_bits + 7) // 8
        if buf.size != used_bytes:
            raise PackageError(
                f"{where}: {buf.size - used_bytes} bytes left over after {count} symbols "
                f"({used_bytes} bytes); the package is corrupted or the symbol count is wrong: "
                f"{_FIX_HINT}"
            )
        pad = -used_bits % 8
        if pad and int(buf[-1]) & ((1 << pad) - 1):
            raise PackageError(
                f"{where}: non-zero padding bits in the last byte (byte {buf.size - 1}); "
                f"the package is corrupted: {_FIX_HINT}"
            )


def _as_symbol_array(symbols, alphabet_size: int) -> np.ndarray:
    """Flatten ``symbols`` to an ``intp`` array, checking every value is in the alphabet."""
    array = np.asarray(symbols)
    if array.size == 0:
        return np.zeros(0, dtype=np.intp)
    if array.dtype.kind not in "iu":
        raise TypeError(f"symbols must be integers, not dtype {array.dtype}")
    array = array.reshape(-1)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= alphabet_size:
        bad = low if low < 0 else high
        raise ValueError(f"symbol {bad} is outside the alphabet 0..{alphabet_size - 1}")
    return array.astype(np.intp, copy=False)
