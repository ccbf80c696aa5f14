"""Copying a volume on the array, device to device, never through a host: what full copies
(of a LUN, PLEX of a set) and resyncs do, on the block devices the backend gives."""
from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable

CHUNK = 4 << 20


def _open(path: str, flags: int) -> int:
    """A block device is opened O_DIRECT. Hosts write the LUNs through LIO's block backstore,
    which bypasses the array's page cache: pages cached there (by an earlier copy, or udev's
    blkid after a change event) can be older than the disk, and a resync that compared them
    would skip chunks that differ. Regular files (the unit tests' stand-ins) have no such
    second writer and not every filesystem takes O_DIRECT."""
    if stat.S_ISBLK(os.stat(path).st_mode):
        flags |= os.O_DIRECT
    return os.open(path, flags | os.O_CLOEXEC)


def copy_blocks(src: str, dst: str, size: int, progress: Callable[[int], None] | None = None,
                only_changed: bool = False) -> int:
    """Copy `size` bytes from device src to dst on the array (never through a host).

    Zero chunks are skipped when the destination is a fresh thin LV (it reads zeros and stays
    thin). With only_changed (resync onto a volume with data), each chunk is compared and only
    differing chunks are written. Returns the bytes written; progress(done_bytes) per chunk.
    """
    written = 0
    zero = bytes(CHUNK)
    # Page-aligned buffers, as O_DIRECT needs; LV sizes are whole sectors, so is every chunk.
    sbuf, dbuf = memoryview(mmap.mmap(-1, CHUNK)), memoryview(mmap.mmap(-1, CHUNK))
    with open(_open(src, os.O_RDONLY), "rb", buffering=0) as s, \
            open(_open(dst, os.O_RDWR), "r+b", buffering=0) as d:
        done = 0
        while done < size:
            n = min(CHUNK, size - done)
            if os.preadv(s.fileno(), [sbuf[:n]], done) != n:
                raise OSError(f"short read from {src} at {done}")
            data = bytes(sbuf[:n])
            if only_changed:
                if os.preadv(d.fileno(), [dbuf[:n]], done) != n:
                    raise OSError(f"short read from {dst} at {done}")
                differs = bytes(dbuf[:n]) != data
            else:
                differs = data != zero[:n]
            if differs:
                if os.pwritev(d.fileno(), [sbuf[:n]], done) != n:
                    raise OSError(f"short write to {dst} at {done}")
                written += n
            done += n
            if progress:
                progress(done)
        os.fsync(d.fileno())
    return written
