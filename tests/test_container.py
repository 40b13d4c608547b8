"""Tests of host.container: the checksummed binary container of .spn package files."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from host import container
from host.container import (
    FORMAT_VERSION,
    MAGIC,
    pack_container,
    read_container,
    unpack_container,
    write_container,
)
from host.errors import PackageError

DTYPE_NAMES = ["bool", "uint8", "uint16", "uint32", "uint64",
               "int8", "int16", "int32", "int64", "float32", "float64"]


def sample_arrays() -> dict[str, np.ndarray]:
    return {
        "weights": np.arange(-6, 6, dtype=np.int16).reshape(3, 4),
        "scale": np.array(0.125),  # 0-d
        "empty": np.zeros((0, 5), dtype=np.uint32),
        "mask": np.array([True, False, True]),
        "big_endian": np.arange(3, dtype=">u8"),
        "odd": np.arange(3, dtype=np.uint8),  # 3 bytes: the next array needs padding
        "floats": np.linspace(-1, 1, 7, dtype=np.float32),
    }


SAMPLE = pack_container({"name": "net", "layers": [{"bits": 4}], "ratio": 0.5}, sample_arrays())


def forge(header, blobs: bytes = b"", *, version: int = FORMAT_VERSION, flags: int = 0) -> bytes:
    """A container built from docs/spn-format.md, with any header, and a valid checksum."""
    if not isinstance(header, bytes):
        header = json.dumps(header).encode()
    start = -(-(24 + len(header)) // 8) * 8
    body = header + bytes(start - 24 - len(header)) + blobs
    total = 24 + len(body) + 32
    content = struct.pack("<8sHHQI", MAGIC, version, flags, total, len(header)) + body
    return content + hashlib.sha256(content).digest()


def entry(name="a", dtype="uint8", shape=(4,), offset=None, nbytes=None):
    return {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset,
            "nbytes": nbytes}


def header_for(entries, kind="spine-model", meta=None):
    return {"kind": kind, "meta": {} if meta is None else meta, "arrays": entries}


def data_start(header) -> int:
    return -(-(24 + len(json.dumps(header).encode())) // 8) * 8


def placed(entries):
    """Header whose entries' offsets, given relative to the data area, are made absolute."""
    relative = [item["offset"] for item in entries]
    header = header_for(entries)
    start = 0
    while True:  # the offsets' digits change the header length: iterate to a fixed point
        for item, offset in zip(entries, relative):
            item["offset"] = start + offset
        if data_start(header) == start:
            return header
        start = data_start(header)


# -- round trip ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)

dtypes = st.sampled_from(DTYPE_NAMES).flatmap(
    lambda name: st.sampled_from([np.dtype(name), np.dtype(name).newbyteorder(">")])
)
arrays = dtypes.flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                     max_side=4))
)


def assert_same_array(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype.newbyteorder("=")
    assert got.dtype.isnative
    assert got.shape == want.shape
    assert got.flags.writeable and got.flags.c_contiguous
    # Byte-exact (NaN payloads and -0.0 included).
    assert got.tobytes() == np.ascontiguousarray(want, dtype=got.dtype).tobytes()


@settings(deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), arrays, max_size=6),
       st.dictionaries(st.text(max_size=8), json_values, max_size=5),
       st.text(min_size=1, max_size=12))
def test_round_trip(arrays_in, meta, kind):
    data = pack_container(meta, arrays_in, kind=kind)
    meta_out, arrays_out = unpack_container(data, expected_kind=kind)
    assert meta_out == meta
    assert list(arrays_out) == list(arrays_in)
    for name, array in arrays_in.items():
        assert_same_array(arrays_out[name], array)


def test_file_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "model.spn"
    size = write_container(path, {"a": [1, 2]}, sample_arrays())
    assert size == path.stat().st_size == len(pack_container({"a": [1, 2]}, sample_arrays()))
    meta, arrays_out = read_container(path)
    assert meta == {"a": [1, 2]}
    for name, array in sample_arrays().items():
        assert_same_array(arrays_out[name], array)
    # Overwriting works and leaves no temporary file behind.
    write_container(str(path), {}, {})
    assert read_container(path) == ({}, {})
    assert os.listdir(tmp_path) == ["model.spn"]


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.spn"
    write_container(path, {"version": "old"}, {})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(container.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_container(path, {"version": "new"}, {})
    monkeypatch.undo()
    assert read_container(path)[0] == {"version": "old"}
    assert os.listdir(tmp_path) == ["model.spn"]


def test_layout_matches_the_document():
    data = SAMPLE
    magic, version, flags, total, header_len = struct.unpack_from("<8sHHQI", data)
    assert (magic, version, flags, total) == (b"\x89SPN\r\n\x1a\n", 1, 0, len(data))
    header = json.loads(data[24:24 + header_len].decode("utf-8"))
    assert set(header) == {"kind", "meta", "arrays"}
    assert header["kind"] == "spine-model"
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    end = 24 + header_len
    for item in header["arrays"]:
        assert item["offset"] % 8 == 0 and item["offset"] >= end
        end = item["offset"] + item["nbytes"]
        dtype = np.dtype(item["dtype"]).newbyteorder("<")
        stored = np.frombuffer(data, dtype, count=item["nbytes"] // dtype.itemsize,
                               offset=item["offset"]).reshape(item["shape"])
        assert_same_array(stored.astype(dtype.newbyteorder("=")),
                          sample_arrays()[item["name"]])
    assert end == len(data) - 32
    assert [a["dtype"] for a in header["arrays"]] == [
        "int16", "float64", "uint32", "bool", "uint64", "uint8", "float32"]


def test_forged_container_is_read():
    """The test's own writer (from the document) produces readable files."""
    header = placed([entry(offset=0, nbytes=4)])
    meta, arrays_out = unpack_container(forge(header, b"\x01\x02\x03\x04"))
    assert meta == {} and arrays_out["a"].tolist() == [1, 2, 3, 4]


# -- rejecting damaged files --------------------------------------------------------------------


@given(st.integers(0, len(SAMPLE) - 1), st.integers(1, 255))
def test_any_byte_flip_rejected(position, mask):
    damaged = bytearray(SAMPLE)
    damaged[position] ^= mask
    with pytest.raises(PackageError, match="^flip.spn: "):
        unpack_container(bytes(damaged), source="flip.spn")


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_position_flip_rejected(mask):
    for position in range(len(SAMPLE)):
        damaged = bytearray(SAMPLE)
        damaged[position] ^= mask
        with pytest.raises(PackageError):
            unpack_container(bytes(damaged))


def test_every_truncation_rejected():
    for end in range(len(SAMPLE)):
        with pytest.raises(PackageError, match="^cut.spn: .*(truncated|empty)") as info:
            unpack_container(SAMPLE[:end], source="cut.spn")
        if end >= 24:
            assert f"has {end} bytes" in str(info.value)
            assert f"says {len(SAMPLE)}" in str(info.value)


def test_trailing_bytes_rejected():
    with pytest.raises(PackageError, match="1 unexpected byte"):
        unpack_container(SAMPLE + b"\x00")


def test_checksum_mismatch_says_corrupted(tmp_path):
    damaged = bytearray(SAMPLE)
    damaged[200] ^= 4
    path = tmp_path / "bad.spn"
    path.write_bytes(bytes(damaged))
    with pytest.raises(PackageError, match="corrupted.*SHA-256|SHA-256.*corrupted") as info:
        read_container(path)
    assert str(info.value).startswith(str(path))


@given(st.binary(max_size=300))
def test_random_bytes_rejected(data):
    assume(data[:8] != MAGIC)
    with pytest.raises(PackageError) as info:
        unpack_container(data, source="random.spn")
    message = str(info.value)
    assert message.startswith("random.spn: ")
    if not MAGIC.startswith(data[:8]) or not data:
        assert "not a spine package" in message


def test_npz_file_rejected_with_hint(tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, w=np.ones((3, 3)))
    with pytest.raises(PackageError) as info:
        read_container(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "not a spine package" in message
    assert ".npz" in message and "python -m host.compress" in message


@pytest.mark.parametrize("mangled", [SAMPLE.replace(b"\r\n", b"\n"),
                                     SAMPLE.replace(b"\n", b"\r\n")])
def test_text_mode_mangling_detected(mangled):
    with pytest.raises(PackageError, match="text-mode"):
        unpack_container(mangled)


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.spn"
    with pytest.raises(PackageError, match="nope.spn: no such file"):
        read_container(missing)
    with pytest.raises(PackageError, match="is a directory"):
        read_container(tmp_path)
    with pytest.raises(PackageError, match="empty"):
        (tmp_path / "empty.spn").write_bytes(b"")
        read_container(tmp_path / "empty.spn")


def test_newer_version_asks_to_upgrade(tmp_path):
    path = tmp_path / "future.spn"
    path.write_bytes(forge(header_for([]), version=FORMAT_VERSION + 1))
    with pytest.raises(PackageError, match="newer spine.*upgrade") as info:
        read_container(path)
    assert str(path) in str(info.value)


def test_older_or_unknown_version_rejected():
    with pytest.raises(PackageError, match="unknown container format version 0"):
        unpack_container(forge(header_for([]), version=0))


def test_unknown_flags_rejected():
    with pytest.raises(PackageError, match="flags 0x0001 at byte offset 10"):
        unpack_container(forge(header_for([]), flags=1))


def test_wrong_kind_rejected():
    data = pack_container({}, {}, kind="spine-trace")
    with pytest.raises(PackageError, match="'spine-trace' container, not a 'spine-model'"):
        unpack_container(data)
    assert unpack_container(data, expected_kind=None) == ({}, {})


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b'{"kind":"spine-model","meta":{"x":NaN},"arrays":[]}', "not valid UTF-8 JSON"),
        (b"[]", "exactly the keys"),
        ({"kind": "spine-model", "meta": {}}, "exactly the keys"),
        ({"kind": "spine-model", "meta": {}, "arrays": [], "extra": 1}, "exactly the keys"),
        ({"kind": 3, "meta": {}, "arrays": []}, "header fields"),
        ({"kind": "spine-model", "meta": [], "arrays": []}, "header fields"),
        (header_for([{"name": "a"}]), "exactly the keys"),
        (header_for([entry(name="", offset=64, nbytes=4)]), "non-empty"),
        (header_for([entry(dtype="float16", offset=64, nbytes=8)]), "dtype 'float16'"),
        (header_for([entry(dtype="<u1", offset=64, nbytes=4)]), "dtype '<u1'"),
        (header_for([entry(shape=(-1,), offset=64, nbytes=4)]), "shape"),
        (header_for([entry(shape=(True,), offset=64, nbytes=1)]), "shape"),
        (header_for([entry(offset=64, nbytes=5)]), "needs 4"),
        (header_for([entry(offset=-8, nbytes=4)]), "offset -8"),
        (header_for([entry(offset=65, nbytes=4)]), "multiple of 8"),
        (header_for([entry(offset=8, nbytes=4)]), "outside the data area"),
        (header_for([entry(offset=1 << 40, nbytes=4)]), "outside the data area"),
    ],
)
def test_malformed_header_rejected(header, match):
    with pytest.raises(PackageError, match=f"^h.spn: .*{match}"):
        unpack_container(forge(header, bytes(64)), source="h.spn")


def test_duplicate_names_rejected():
    header = placed([entry(offset=0, nbytes=4), entry(offset=8, nbytes=4)])
    with pytest.raises(PackageError, match="names the array 'a' twice"):
        unpack_container(forge(header, bytes(16)))


def test_overlapping_arrays_rejected():
    header = placed([entry(offset=0, nbytes=4), entry(name="b", shape=(2,), offset=0, nbytes=2)])
    with pytest.raises(PackageError, match="arrays '[ab]' and '[ab]' overlap at byte offset"):
        unpack_container(forge(header, bytes(8)))
    # Empty arrays occupy no bytes, so they may share an offset with anything.
    header = placed([entry(offset=0, nbytes=4), entry(name="b", shape=(0,), offset=0, nbytes=0)])
    assert unpack_container(forge(header, bytes(8)))[1]["b"].shape == (0,)


def test_bool_bytes_other_than_0_and_1_rejected():
    header = placed([entry(dtype="bool", offset=0, nbytes=4)])
    with pytest.raises(PackageError, match="bool array 'a'.*other than 0 and 1"):
        unpack_container(forge(header, b"\x00\x01\x02\x00"))


def test_header_length_past_end_rejected():
    data = bytearray(forge(header_for([])))
    body_end = len(data) - 32
    struct.pack_into("<I", data, 20, body_end)  # header would run past the checksum
    data[-32:] = hashlib.sha256(data[:-32]).digest()
    with pytest.raises(PackageError, match=r"header length \d+ \(byte offset 20\) runs past"):
        unpack_container(bytes(data))


# -- rejecting bad input on write ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [np.array(["text"]), np.array([None, 1], dtype=object), np.zeros(2, np.float16),
     np.zeros(2, np.complex64), np.array(["2020-01-01"], dtype="datetime64[D]")],
)
def test_unsupported_dtypes_rejected_on_write(value, tmp_path):
    with pytest.raises(TypeError, match="cannot hold"):
        write_container(tmp_path / "x.spn", {}, {"x": value})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("meta", "match"),
    [({"a": np.int64(1)}, r"meta\['a'\] is a int64"), ({"a": float("nan")}, "NaN"),
     ({1: "x"}, "keys must be str"), ({"a": [{"b": {2}}]}, r"meta\['a'\]\[0\]\['b'\]")],
)
def test_unserialisable_meta_rejected(meta, match):
    with pytest.raises(TypeError, match=match):
        pack_container(meta, {})


def test_bad_names_and_kind_rejected():
    with pytest.raises(ValueError, match="empty"):
        pack_container({}, {"": np.zeros(1)})
    with pytest.raises(TypeError, match="names must be str"):
        pack_container({}, {3: np.zeros(1)})
    with pytest.raises(ValueError, match="kind"):
        pack_container({}, {}, kind="")


def test_packing_is_deterministic():
    assert pack_container({"a": 1}, sample_arrays()) == pack_container({"a": 1}, sample_arrays())
