"""The versioned, checksummed binary container of ``.spn`` package files.

A container holds one JSON-serialisable ``meta`` dict and any number of named NumPy arrays.  It
knows nothing of models: the model schema (which arrays and meta keys a package has) is built
on top of it by :mod:`host.package`.  The byte layout is specified in ``docs/spn-format.md``
("Container layer"); in short, all integers little-endian::

    offset  size  field
    0       8     magic b"\\x89SPN\\r\\n\\x1a\\n"
    8       2     uint16 format version (FORMAT_VERSION = 1)
    10      2     uint16 flags (0)
    12      8     uint64 total file length in bytes, checksum included
    20      4     uint32 header length H in bytes
    24      H     header: UTF-8 JSON {"kind", "meta", "arrays": [{"name", "dtype", "shape",
                  "offset", "nbytes"}, ...]}
    ...           zero padding, then the array blobs, each at an offset that is a multiple
                  of 8, little-endian, C order, with zero padding between them
    L - 32  32    SHA-256 of bytes 0 .. L - 33

Reading checks everything before returning anything: a damaged, truncated, foreign or
newer-version file raises :class:`~host.errors.PackageError` whose message says what is wrong,
where, and how to fix it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import secrets
import struct
from pathlib import Path

import numpy as np

from .errors import PackageError

__all__ = [
    "DEFAULT_KIND",
    "DTYPES",
    "FORMAT_VERSION",
    "MAGIC",
    "pack_container",
    "read_container",
    "unpack_container",
    "write_container",
]

#: First 8 bytes of every container.  As in PNG: a non-ASCII first byte catches 7-bit
#: transfers, "SPN" names the format, CR LF catches line-ending conversion, ^Z stops a DOS
#: ``type``, and the final LF catches LF -> CR LF conversion.
MAGIC = b"\x89SPN\r\n\x1a\n"
#: Container format version this spine writes and the only one it reads.
FORMAT_VERSION = 1
#: Kind written by default and expected by default on read.
DEFAULT_KIND = "spine-model"
#: Allowed array dtypes: name in the header -> little-endian NumPy dtype of the stored bytes.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("bool", "uint8", "uint16", "uint32", "uint64",
                 "int8", "int16", "int32", "int64", "float32", "float64")
}

_PREFIX = struct.Struct("<8sHHQI")  # magic, version, flags, total length, header length
_PREFIX_SIZE = _PREFIX.size  # 24
_DIGEST_SIZE = 32  # SHA-256
_MIN_SIZE = _PREFIX_SIZE + _DIGEST_SIZE  # 56: empty header (invalid, but the bound is safe)
_ALIGN = 8
_MAX_NDIM = 32
_ENTRY_KEYS = ("name", "dtype", "shape", "offset", "nbytes")
_HEADER_KEYS = ("kind", "meta", "arrays")
_RECREATE = "re-create it with `python -m host.compress`"


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


# -- writing ------------------------------------------------------------------------------------


def _check_meta(value, where: str) -> None:
    """Raise TypeError unless ``value`` survives a JSON round trip unchanged in kind."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}: JSON has no NaN or infinity; store it as None "
                            f"or a string")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_meta(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r}: JSON object keys must be str")
            _check_meta(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which is not JSON-serialisable; convert it "
        f"(e.g. int(), float(), .tolist()) or store it as an array"
    )


def _dtype_name(array: np.ndarray, name: str) -> str:
    dtype = array.dtype
    for dtype_name, stored in DTYPES.items():
        if dtype.kind == stored.kind and dtype.itemsize == stored.itemsize:
            return dtype_name
    raise TypeError(
        f"array {name!r} has dtype {dtype}, which a container cannot hold; allowed: "
        f"{', '.join(DTYPES)}"
    )


def pack_container(meta: dict, arrays: dict[str, np.ndarray], kind: str = DEFAULT_KIND) -> bytes:
    """Serialise ``meta`` and ``arrays`` into the bytes of a container.

    Parameters
    ----------
    meta : dict
        JSON-serialisable: str keys; values None, bool, int, finite float, str, list, tuple
        (read back as list) or dict.
    arrays : dict of str to ndarray
        Non-empty names; dtypes bool, (u)int8/16/32/64, float32/64; any shape incl. 0-d and
        empty.  Stored little-endian in C order.
    kind : str
        What the container holds (``"spine-model"`` for model packages).

    Returns
    -------
    bytes
        The whole file.

    Raises
    ------
    TypeError
        For a meta value that is not JSON-serialisable, a non-str name, or an array dtype
        outside the allowed set (object, str, complex, float16, datetime, ...).
    ValueError
        For an empty kind or array name.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"`kind` must be a non-empty str, not {kind!r}")
    if not isinstance(meta, dict):
        raise TypeError(f"`meta` must be a dict, not {type(meta).__name__}")
    _check_meta(meta, "meta")
    entries = []
    blobs = []
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"array names must be str, not {name!r}")
        if not name:
            raise ValueError("array names must not be empty")
        array = np.asarray(value)
        dtype_name = _dtype_name(array, name)
        if array.ndim > _MAX_NDIM:
            raise ValueError(f"array {name!r} has {array.ndim} dimensions; at most {_MAX_NDIM}")
        blob = np.ascontiguousarray(array, dtype=DTYPES[dtype_name]).tobytes()
        entries.append({"name": name, "dtype": dtype_name,
                        "shape": [int(n) for n in array.shape], "offset": 0,
                        "nbytes": len(blob)})
        blobs.append(blob)

    # The offsets are part of the header, whose length depends on the offsets' digits: lay out
    # with a guess, then repeat until the header length is stable (at most a few rounds).
    header_len = -1
    while True:
        position = _align(_PREFIX_SIZE + max(header_len, 0))
        for entry, blob in zip(entries, blobs):
            entry["offset"] = position
            position = _align(position + len(blob))
        header = json.dumps({"kind": kind, "meta": meta, "arrays": entries},
                            ensure_ascii=False, separators=(",", ":"),
                            allow_nan=False).encode("utf-8")
        if len(header) == header_len:
            break
        header_len = len(header)
    data_end = entries[-1]["offset"] + len(blobs[-1]) if entries else _PREFIX_SIZE + header_len
    total = data_end + _DIGEST_SIZE
    out = bytearray(total)
    _PREFIX.pack_into(out, 0, MAGIC, FORMAT_VERSION, 0, total, header_len)
    out[_PREFIX_SIZE:_PREFIX_SIZE + header_len] = header
    for entry, blob in zip(entries, blobs):
        out[entry["offset"]:entry["offset"] + len(blob)] = blob
    out[data_end:] = hashlib.sha256(memoryview(out)[:data_end]).digest()
    return bytes(out)


def write_container(path, meta: dict, arrays: dict[str, np.ndarray],
                    kind: str = DEFAULT_KIND) -> int:
    """Write a container file atomically.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the
    temporary file then replaces ``path`` (``os.replace``), so a reader never sees a partial
    file and an interrupted write leaves any old file intact.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, conventionally ``*.spn``.
    meta, arrays, kind
        As for :func:`pack_container`.

    Returns
    -------
    int
        Bytes written.
    """
    data = pack_container(meta, arrays, kind)
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 lets the umask decide the permissions, as for an ordinary file.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return len(data)


# -- reading ------------------------------------------------------------------------------------


def _describe_foreign(data: bytes) -> str:
    """Say what a file that lacks the magic looks like, with a hint."""
    head = data[:16]
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ("it looks like a zip archive: a NumPy .npz float model or a PyTorch checkpoint. "
                "Compress a float model into a package with `python -m host.compress`")
    if head.startswith(b"\x93NUMPY"):
        return ("it looks like a NumPy .npy array. Save float models as .npz and compress them "
                "with `python -m host.compress`")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return ("it looks like a Python pickle (e.g. an old-style PyTorch checkpoint). Compress "
                "the model with `python -m host.compress`")
    if head.startswith(b"\x1f\x8b"):
        return "it looks like a gzip file: decompress it first"
    if head.startswith(b"\x89HDF"):
        return "it looks like an HDF5 file (e.g. Keras): export the model to .npz first"
    mangled = (b"\x89SPN\n\x1a\n", b"\x89SPN\r\r\n", b"\x89SPN\r\n\x1a\r\n", b"\x09SPN\r\n",
               b"\xef\xbf\xbdSPN", b"\xc2\x89SPN")
    if any(head.startswith(m) for m in mangled):
        return ("it was a spine package, but a text-mode transfer converted its line endings "
                "or non-ASCII bytes (see its first 8 bytes): copy it again in binary mode, "
                "or " + _RECREATE)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return f"it starts with the text {text!r}"
    return (f"it starts with the bytes {head[:8].hex(' ')} (a spine package starts with "
            f"{MAGIC.hex(' ')})")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _fail(source: str, message: str) -> PackageError:
    return PackageError(f"{source}: {message}")


def _check_prefix(data: bytes, source: str) -> tuple[int, int]:
    """Check magic, version, flags and length; return (total length, header length)."""
    size = len(data)
    if size == 0:
        raise _fail(source, f"the file is empty, not a spine package (.spn); {_RECREATE}")
    if not data.startswith(MAGIC[:min(size, len(MAGIC))]):
        raise _fail(source, f"not a spine package (.spn): {_describe_foreign(data)}")
    if size < _PREFIX_SIZE:
        raise _fail(source, f"truncated: the file has {size} bytes but the fixed header of a "
                            f"spine package alone is {_PREFIX_SIZE} bytes; {_RECREATE}")
    _, version, flags, total, header_len = _PREFIX.unpack_from(data, 0)
    if version > FORMAT_VERSION:
        raise _fail(source, f"written by a newer spine (container format version {version} at "
                            f"byte offset 8; this spine reads version {FORMAT_VERSION}): upgrade "
                            f"spine (if no newer spine wrote it, the file is corrupted)")
    if version != FORMAT_VERSION:
        raise _fail(source, f"unknown container format version {version} at byte offset 8 "
                            f"(this spine reads version {FORMAT_VERSION}): the file is "
                            f"corrupted; {_RECREATE}")
    if flags != 0:
        raise _fail(source, f"unknown flags 0x{flags:04x} at byte offset 10 (version "
                            f"{FORMAT_VERSION} defines none): the file is corrupted or written by "
                            f"a newer spine; upgrade spine or {_RECREATE}")
    if size < total:
        raise _fail(source, f"truncated: the file has {size} bytes but its length field (byte "
                            f"offset 12) says {total}; copy or download it again, or {_RECREATE}")
    if size > total:
        raise _fail(source, f"{size - total} unexpected byte(s) after the end of the package: the "
                            f"file has {size} bytes but its length field (byte offset 12) says "
                            f"{total}; the file is corrupted; {_RECREATE}")
    if total < _MIN_SIZE:
        raise _fail(source, f"corrupted: the length field (byte offset 12) says {total} bytes, "
                            f"less than the minimum {_MIN_SIZE}; {_RECREATE}")
    return total, header_len


def _check_entry(entry, index: int, total: int, data_start: int, source: str):
    """Validate one array entry; return (name, dtype, shape, offset, nbytes)."""
    where = f"header array entry {index}"
    if not isinstance(entry, dict) or sorted(entry) != sorted(_ENTRY_KEYS):
        raise _fail(source, f"corrupted: {where} must be an object with exactly the keys "
                            f"{', '.join(_ENTRY_KEYS)}; {_RECREATE}")
    name, dtype_name, shape = entry["name"], entry["dtype"], entry["shape"]
    offset, nbytes = entry["offset"], entry["nbytes"]
    if not isinstance(name, str) or not name:
        raise _fail(source, f"corrupted: {where} has the name {name!r}, not a non-empty "
                            f"string; {_RECREATE}")
    where = f"header array {name!r}"
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise _fail(source, f"{where} has the dtype {dtype_name!r}, which this spine does not "
                            f"know (known: {', '.join(DTYPES)}): the file is corrupted or "
                            f"written by a newer spine; upgrade spine or {_RECREATE}")

    def is_count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(is_count(n) for n in shape)):
        raise _fail(source, f"corrupted: {where} has the shape {shape!r}, not a list of at most "
                            f"{_MAX_NDIM} non-negative integers; {_RECREATE}")
    if not is_count(offset) or not is_count(nbytes):
        raise _fail(source, f"corrupted: {where} has offset {offset!r} and nbytes {nbytes!r}, "
                            f"not non-negative integers; {_RECREATE}")
    dtype = DTYPES[dtype_name]
    if math.prod(shape) * dtype.itemsize != nbytes:
        raise _fail(source, f"corrupted: {where} has nbytes {nbytes}, but shape {shape} of "
                            f"{dtype_name} needs {math.prod(shape) * dtype.itemsize}; {_RECREATE}")
    if offset % _ALIGN:
        raise _fail(source, f"corrupted: {where} starts at byte offset {offset}, not a multiple "
                            f"of {_ALIGN}; {_RECREATE}")
    if offset < data_start or offset + nbytes > total - _DIGEST_SIZE:
        raise _fail(source, f"corrupted: {where} occupies bytes {offset}..{offset + nbytes} "
                            f"(offset, offset + nbytes), outside the data area "
                            f"{data_start}..{total - _DIGEST_SIZE}; {_RECREATE}")
    return name, dtype, shape, offset, nbytes


def unpack_container(
    data, source: str = "<bytes>", expected_kind: str | None = DEFAULT_KIND
) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and fully check the bytes of a container.

    Parameters
    ----------
    data : bytes-like
        The whole file.
    source : str
        Where the bytes came from (file path), used at the start of error messages.
    expected_kind : str or None
        The kind the caller expects; None accepts any kind.

    Returns
    -------
    meta : dict
        As written (tuples come back as lists).
    arrays : dict of str to ndarray
        Freshly allocated, writable arrays in native byte order, in file order.

    Raises
    ------
    PackageError
        If the data is not a container, of another format version, truncated, corrupted
        (SHA-256 mismatch), has a malformed header, or is of another kind.  Nothing is returned
        unless every check passes.
    """
    data = bytes(data)
    total, header_len = _check_prefix(data, source)
    body_end = total - _DIGEST_SIZE
    digest = hashlib.sha256(memoryview(data)[:body_end]).digest()
    if digest != data[body_end:total]:
        raise _fail(source, f"corrupted: the SHA-256 checksum (last {_DIGEST_SIZE} bytes, byte "
                            f"offset {body_end}) does not match the contents; copy or download "
                            f"the file again, or {_RECREATE}")
    if _PREFIX_SIZE + header_len > body_end:
        raise _fail(source, f"corrupted: the header length {header_len} (byte offset 20) runs "
                            f"past the end of the data at byte {body_end}; {_RECREATE}")
    try:
        header = json.loads(data[_PREFIX_SIZE:_PREFIX_SIZE + header_len].decode("utf-8"),
                            parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise _fail(source, f"corrupted: the header (byte offset {_PREFIX_SIZE}, {header_len} "
                            f"bytes) is not valid UTF-8 JSON ({error}); {_RECREATE}") from None
    if not isinstance(header, dict) or sorted(header) != sorted(_HEADER_KEYS):
        raise _fail(source, f"corrupted: the header (byte offset {_PREFIX_SIZE}) must be a JSON "
                            f"object with exactly the keys {', '.join(_HEADER_KEYS)}; "
                            f"{_RECREATE}")
    kind, meta, entries = header["kind"], header["meta"], header["arrays"]
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(entries, list):
        raise _fail(source, "corrupted: the header fields must be kind: string, meta: object, "
                            f"arrays: list; {_RECREATE}")
    if expected_kind is not None and kind != expected_kind:
        raise _fail(source, f"this is a {kind!r} container, not a {expected_kind!r} one (header "
                            f"field 'kind' at byte offset {_PREFIX_SIZE}): pass a "
                            f"{expected_kind} file")
    data_start = _align(_PREFIX_SIZE + header_len)
    checked = []
    names = set()
    for index, entry in enumerate(entries):
        item = _check_entry(entry, index, total, data_start, source)
        if item[0] in names:
            raise _fail(source, f"corrupted: the header names the array {item[0]!r} twice; "
                                f"{_RECREATE}")
        names.add(item[0])
        checked.append(item)
    spans = sorted((offset, offset + nbytes, name) for name, _, _, offset, nbytes in checked
                   if nbytes)
    for (_, end, name), (start, _, next_name) in itertools.pairwise(spans):
        if start < end:
            raise _fail(source, f"corrupted: arrays {name!r} and {next_name!r} overlap at byte "
                                f"offset {start}; {_RECREATE}")
    arrays = {}
    for name, dtype, shape, offset, nbytes in checked:
        stored = np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
        if dtype.kind == "b" and stored.size and stored.view(np.uint8).max() > 1:
            raise _fail(source, f"corrupted: bool array {name!r} (byte offset {offset}) holds "
                                f"bytes other than 0 and 1; {_RECREATE}")
        arrays[name] = stored.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
    return meta, arrays


def read_container(path, expected_kind: str | None = DEFAULT_KIND
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and fully check a container file.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.spn`` file.
    expected_kind : str or None
        As for :func:`unpack_container`.

    Returns
    -------
    meta : dict
    arrays : dict of str to ndarray
        As for :func:`unpack_container`.

    Raises
    ------
    PackageError
        If the file is missing or unreadable, or for any reason :func:`unpack_container`
        gives; the message starts with the path.
    """
    source = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise _fail(source, "no such file; check the path, or create the package with "
                            "`python -m host.compress`") from None
    except IsADirectoryError:
        raise _fail(source, "is a directory, not a spine package (.spn) file") from None
    except PermissionError:
        raise _fail(source, "cannot read the file: permission denied") from None
    except OSError as error:
        raise _fail(source, f"cannot read the file: {error.strerror or error}") from None
    return unpack_container(data, source, expected_kind)
