"""Unit tests of targets.block_copy: copy_blocks on temporary files."""
from __future__ import annotations

import os

import pytest

from targets.block_copy import CHUNK, copy_blocks


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _empty(path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def _chunk(byte: int, n: int = CHUNK) -> bytes:
    return bytes([byte]) * n


def test_copy_blocks_copies_bytes_exactly(tmp_path):
    data = os.urandom(2 * CHUNK + 12345)
    src, dst = _write(tmp_path / "src", data), _empty(tmp_path / "dst", len(data))
    written = copy_blocks(src, dst, len(data))
    assert (tmp_path / "dst").read_bytes() == data
    assert written == len(data)


def test_copy_blocks_skips_zero_chunks(tmp_path):
    data = bytes(CHUNK) + _chunk(0x5A) + bytes(CHUNK)
    src, dst = _write(tmp_path / "src", data), _empty(tmp_path / "dst", len(data))
    assert copy_blocks(src, dst, len(data)) == CHUNK
    assert (tmp_path / "dst").read_bytes() == data


def test_copy_blocks_does_not_touch_destination_where_source_is_zero(tmp_path):
    """A fresh thin LV reads zeros there anyway; writing would only allocate."""
    data = bytes(CHUNK) + _chunk(0x5A)
    src = _write(tmp_path / "src", data)
    dst = _write(tmp_path / "dst", _chunk(0xFF) * 2)
    assert copy_blocks(src, dst, len(data)) == CHUNK
    assert (tmp_path / "dst").read_bytes() == _chunk(0xFF) + _chunk(0x5A)


def test_copy_blocks_partial_last_chunk(tmp_path):
    data = bytes(CHUNK) + b"\x01" * 1000
    src, dst = _write(tmp_path / "src", data), _empty(tmp_path / "dst", len(data))
    assert copy_blocks(src, dst, len(data)) == 1000
    assert (tmp_path / "dst").read_bytes() == data


def test_copy_blocks_only_changed_writes_differing_chunks(tmp_path):
    old = _chunk(1) + _chunk(2) + _chunk(3) + _chunk(4)
    new = _chunk(1) + _chunk(9) + _chunk(3) + _chunk(4)
    src, dst = _write(tmp_path / "src", new), _write(tmp_path / "dst", old)
    assert copy_blocks(src, dst, len(new), only_changed=True) == CHUNK
    assert (tmp_path / "dst").read_bytes() == new


def test_copy_blocks_only_changed_writes_zeros_over_data(tmp_path):
    """A resync must bring zero chunks back, unlike a copy onto a fresh LV."""
    new = bytes(CHUNK) + _chunk(7)
    src, dst = _write(tmp_path / "src", new), _write(tmp_path / "dst", _chunk(0xEE) + _chunk(7))
    assert copy_blocks(src, dst, len(new), only_changed=True) == CHUNK
    assert (tmp_path / "dst").read_bytes() == new


def test_copy_blocks_only_changed_identical_writes_nothing(tmp_path):
    data = _chunk(3) * 2
    src, dst = _write(tmp_path / "src", data), _write(tmp_path / "dst", data)
    assert copy_blocks(src, dst, len(data), only_changed=True) == 0


def test_copy_blocks_progress_reaches_size(tmp_path):
    size = 3 * CHUNK + 7
    src, dst = _write(tmp_path / "src", os.urandom(size)), _empty(tmp_path / "dst", size)
    seen: list[int] = []
    copy_blocks(src, dst, size, progress=seen.append)
    assert seen == [CHUNK, 2 * CHUNK, 3 * CHUNK, size]


def test_copy_blocks_only_the_requested_size(tmp_path):
    data = _chunk(1) + _chunk(2)
    src, dst = _write(tmp_path / "src", data), _empty(tmp_path / "dst", len(data))
    assert copy_blocks(src, dst, CHUNK) == CHUNK
    assert (tmp_path / "dst").read_bytes() == _chunk(1) + bytes(CHUNK)


def test_copy_blocks_short_read_raises(tmp_path):
    src = _write(tmp_path / "src", _chunk(1) + b"x" * 10)
    dst = _empty(tmp_path / "dst", 2 * CHUNK)
    with pytest.raises(OSError, match="short read"):
        copy_blocks(src, dst, 2 * CHUNK)


def test_copy_blocks_zero_size(tmp_path):
    src, dst = _write(tmp_path / "src", b""), _empty(tmp_path / "dst", 0)
    seen: list[int] = []
    assert copy_blocks(src, dst, 0, progress=seen.append) == 0
    assert seen == []


def test_copy_blocks_needs_an_existing_destination(tmp_path):
    src = _write(tmp_path / "src", _chunk(1))
    with pytest.raises(OSError):
        copy_blocks(src, str(tmp_path / "missing"), CHUNK)
    assert not (tmp_path / "missing").exists()  # never creates a file in /dev by mistake
