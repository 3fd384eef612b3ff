"""Reading the IDX file format that MNIST is distributed in.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimension sizes, then the array data in C order, big-endian.
The files are usually distributed gzip-compressed; `read_idx` detects this by
the gzip magic bytes ``1f 8b`` rather than by the file name.

Every problem with a file (missing, bad magic, truncated header or data, trailing
bytes, broken gzip stream) raises `DataError` naming the file
and the problem; a half-read array is never returned.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Union

import numpy as np

from l2l_jax.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]

#: IDX dtype code -> big-endian numpy dtype, as in the format description.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _decompress(raw: bytes, path: Path) -> bytes:
    """Gunzips ``raw``; any damage to the stream becomes a DataError."""
    try:
        return gzip.decompress(raw)
    except EOFError as exc:  # the stream ends before its end-of-stream marker
        raise DataError(f"{path}: truncated gzip data ({exc})") from exc
    except (OSError, zlib.error) as exc:  # bad header, bad CRC, corrupt deflate data
        raise DataError(f"{path}: corrupt gzip data ({exc})") from exc


def parse_idx(data: bytes, source: PathLike = "<bytes>") -> np.ndarray:
    """Parses the (already decompressed) bytes of an IDX file.

    Args:
        data: The raw IDX bytes: magic, dimension sizes, array data.
        source: A name for the data, used only in error messages.

    Returns:
        A new, writable, native-byte-order array with the dtype and shape of the
        header.

    Raises:
        DataError: If the magic number is wrong, the dtype code unknown, or the
            number of bytes does not match the header's shape.
    """
    if len(data) < 4:
        raise DataError(f"{source}: not an IDX file (only {len(data)} bytes, too short for the magic number)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{source}: bad IDX magic number {data[:4].hex()} (the first two bytes must be 00 00)"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{source}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{source}: truncated IDX header ({len(data)} bytes, a {ndim}-dimensional header needs {header_len})"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    count = 1
    for dim in shape:
        count *= dim  # Python ints: no overflow on absurd headers
    expected = header_len + count * dtype.itemsize
    if len(data) != expected:
        # Fewer bytes means truncation, more means a wrong header; either way the
        # header's shape cannot be trusted, so refuse rather than guess.
        problem = "truncated data" if len(data) < expected else "trailing bytes after the data"
        raise DataError(
            f"{source}: {problem}: header shape {shape} of {dtype.name} needs {expected} bytes, "
            f"the file has {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header_len)
    # astype copies into native byte order, so callers get a normal writable array.
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(path: PathLike) -> np.ndarray:
    """Reads an IDX file, gzip-compressed or raw.

    Compression is detected from the first two bytes (``1f 8b``), not the name.

    Args:
        path: The file to read.

    Returns:
        A native-byte-order numpy array whose dtype and shape come from the header
        (uint8, int8, int16, int32, float32 or float64).

    Raises:
        DataError: If the file is missing or unreadable, the gzip stream is
            truncated or corrupt, or the IDX content is malformed (see
            `parse_idx`).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataError(f"{path}: cannot read IDX file ({reason})") from exc
    if raw[:2] == _GZIP_MAGIC:
        raw = _decompress(raw, path)
    return parse_idx(raw, path)
