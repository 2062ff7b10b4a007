"""A strict reader (and writer) of IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is: two zero bytes, a type code, the number of dimensions ``d``; then ``d``
big-endian uint32 sizes; then exactly ``prod(sizes)`` big-endian elements of the type. The file
may be gzip-compressed (detected from its first bytes, not from its name).

Every defect (missing file, damaged gzip stream, wrong magic, unknown type, too few or too many
bytes, unexpected rank or dtype) raises ``archnet.errors.DataError`` with one line naming the file.
NumPy only: no torch import.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from archnet.errors import DataError
from simulator.fileio import atomic_write_bytes

# type code -> big-endian dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt.newbyteorder("=").str[1:]: code for code, dt in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_NDIM = 16  # far above any real data set; guards against reading garbage as a header


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: no such IDX file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: damaged gzip stream ({type(exc).__name__}: {exc})") from None
    return raw


def read_idx(path: str | os.PathLike, *, ndim: int | None = None,
             dtype: str | np.dtype | None = None) -> np.ndarray:
    """The array stored in an IDX file (gzip or not), in native byte order.

    ``ndim`` and ``dtype``, when given, are checked against the header: a labels file read as
    images is an error, not a surprise three calls later.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (4 bytes of magic)")
    zero0, zero1, code, rank = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"{path}: not an IDX file (magic {raw[:4].hex()}, expected 0000TTDD)")
    if code not in IDX_TYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x} "
                        f"(known: {', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
    if rank == 0 or rank > _MAX_NDIM:
        raise DataError(f"{path}: IDX header declares {rank} dimensions (1..{_MAX_NDIM} allowed)")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {header} needed "
                        f"for {rank} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    dt = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    got = len(raw) - header
    if got < expected:
        raise DataError(f"{path}: truncated IDX data: header declares shape {shape} of {dt.name} "
                        f"({expected} bytes), file holds {got}")
    if got > expected:
        raise DataError(f"{path}: {got - expected} unexpected bytes after the IDX data "
                        f"(shape {shape}, {expected} bytes)")
    if ndim is not None and rank != ndim:
        raise DataError(f"{path}: IDX array has {rank} dimensions {shape}, expected {ndim}")
    native = dt.newbyteorder("=")
    if dtype is not None and native != np.dtype(dtype):
        raise DataError(f"{path}: IDX array holds {native.name}, expected {np.dtype(dtype).name}")
    arr = np.frombuffer(raw, dtype=dt, offset=header).reshape(shape)
    return arr.astype(native, copy=True)  # writable, native order, detached from ``raw``


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip when ``compress`` or when the name ends in ``.gz``).

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    arr = np.asarray(array)
    key = arr.dtype.newbyteorder("=").str[1:]
    if key not in _CODE_OF:
        raise DataError(f"{path}: IDX cannot store dtype {arr.dtype.name} "
                        f"(uint8, int8, int16, int32, float32, float64)")
    if not 1 <= arr.ndim <= _MAX_NDIM:
        raise DataError(f"{path}: IDX stores 1..{_MAX_NDIM} dimensions, got {arr.ndim}")
    code = _CODE_OF[key]
    payload = (bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
               + np.ascontiguousarray(arr, dtype=IDX_TYPES[code]).tobytes())
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, mtime=0)
    return atomic_write_bytes(path, payload)


