"""The IDX reader is strict: every defect is a one-line DataError naming the file."""

import gzip

import numpy as np
import pytest

from archnet.data.idx import read_idx, write_idx
from archnet.errors import ArchnetError, DataError
from simulator.errors import SimulatorError


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 5, 7)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a-{dtype}{'.gz' if compress else ''}", arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable


def test_header_bytes_are_the_idx_format(tmp_path):
    """Known bytes, written by hand: magic 0x00000801, one dimension of 3, values 7 8 9."""
    p = tmp_path / "labels-idx1-ubyte"
    p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    np.testing.assert_array_equal(read_idx(p), [7, 8, 9])
    # big-endian int16: 0x0102 = 258
    q = tmp_path / "short"
    q.write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 1, 1, 2]))
    assert read_idx(q).tolist() == [258]


def test_gzip_is_detected_by_content_not_name(tmp_path):
    p = tmp_path / "images-no-suffix"
    p.write_bytes(gzip.compress(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4])))
    np.testing.assert_array_equal(read_idx(p), [[1, 2], [3, 4]])


def _bad(tmp_path, name, payload):
    p = tmp_path / name
    p.write_bytes(payload)
    return p


@pytest.mark.parametrize("name, payload, message", [
    ("truncated", bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3]), "truncated IDX data"),
    ("trailing", bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]), "unexpected bytes"),
    ("wrong-magic", bytes([1, 2, 8, 1, 0, 0, 0, 1, 5]), "not an IDX file"),
    ("png", b"\x89PNG\r\n\x1a\n", "not an IDX file"),
    ("type-code", bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 5]), "unknown IDX type code 0x0a"),
    ("zero-dims", bytes([0, 0, 8, 0]), "0 dimensions"),
    ("short-header", bytes([0, 0, 8, 3, 0, 0, 0, 1]), "truncated IDX header"),
    ("tiny", bytes([0, 0]), "too short"),
    ("empty", b"", "too short"),
])
def test_defects_are_data_errors_naming_the_file(tmp_path, name, payload, message):
    p = _bad(tmp_path, name, payload)
    with pytest.raises(DataError, match=message) as info:
        read_idx(p)
    text = str(info.value)
    assert str(p) in text and "\n" not in text
    assert isinstance(info.value, ArchnetError) and isinstance(info.value, SimulatorError)


def test_truncated_gzip_stream(tmp_path):
    whole = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(range(200)))
    p = _bad(tmp_path, "cut.gz", whole[: len(whole) // 2])
    with pytest.raises(DataError, match="damaged gzip") as info:
        read_idx(p)
    assert str(p) in str(info.value)


def test_truncated_real_sized_file(tmp_path):
    arr = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28)
    p = write_idx(tmp_path / "images", arr)
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"shape \(4, 28, 28\).*3136 bytes.*holds 3135"):
        read_idx(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such IDX file"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="not a file"):
        read_idx(tmp_path)


def test_expected_rank_and_dtype(tmp_path):
    p = write_idx(tmp_path / "labels", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="1 dimensions.*expected 3"):
        read_idx(p, ndim=3)
    with pytest.raises(DataError, match="holds uint8, expected int32"):
        read_idx(p, dtype=np.int32)
    assert read_idx(p, ndim=1, dtype=np.uint8).shape == (5,)


def test_write_refuses_what_idx_cannot_store(tmp_path):
    with pytest.raises(DataError, match="cannot store dtype"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
    assert not list(tmp_path.iterdir())
