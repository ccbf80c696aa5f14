"""Copying a volume on the array, device to device, never through a host: what full copies
(of a LUN, PLEX of a set) and resyncs do, on the block devices the backend gives."""
from __future__ import annotations

import os
from collections.abc import Callable

CHUNK = 4 << 20


def copy_blocks(src: str, dst: str, size: int, progress: Callable[[int], None] | None = None,
                only_changed: bool = False) -> int:
    """Copy `size` bytes from device src to dst on the array (never through a host).

    Zero chunks are skipped when the destination is a fresh thin LV (it reads zeros and stays
    thin). With only_changed (resync onto a volume with data), each chunk is compared and only
    differing chunks are written. Returns the bytes written; progress(done_bytes) per chunk.
    """
    written = 0
    zero = bytes(CHUNK)
    with open(src, "rb", buffering=0) as s, open(dst, "r+b", buffering=0) as d:
        done = 0
        while done < size:
            n = min(CHUNK, size - done)
            data = s.read(n)
            if len(data) != n:
                raise OSError(f"short read from {src} at {done}")
            if only_changed:
                d.seek(done)
                if d.read(n) != data:
                    d.seek(done)
                    d.write(data)
                    written += n
            elif data != zero[:n]:
                d.seek(done)
                d.write(data)
                written += n
            done += n
            if progress:
                progress(done)
        os.fsync(d.fileno())
    return written
