"""zlib compression of qcow2 clusters, as QEMU's qcow2-threads.c does it.

QEMU stores raw deflate streams (no zlib header) with a 4 KiB window
(``windowBits = -12``), default level, memLevel 9.
"""

from __future__ import annotations

import zlib


def compress_cluster(data: bytes | bytearray | memoryview, cluster_size: int) -> bytes | None:
    """Deflate one cluster; None when the result would not be smaller than a cluster
    (QEMU then writes the cluster uncompressed)."""
    co = zlib.compressobj(
        zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9, zlib.Z_DEFAULT_STRATEGY
    )
    out = co.compress(bytes(data)) + co.flush(zlib.Z_FINISH)
    if len(out) >= cluster_size:
        return None
    return out


def decompress_cluster(data: bytes, cluster_size: int) -> bytes:
    """Inflate a compressed cluster into exactly cluster_size bytes.

    Raises OSError(EIO) like QEMU when the stream is damaged or too short.
    """
    import errno

    do = zlib.decompressobj(-12)
    try:
        out = do.decompress(data, cluster_size)
    except zlib.error as exc:
        raise OSError(errno.EIO, "Input/output error") from exc
    if len(out) != cluster_size:
        raise OSError(errno.EIO, "Input/output error")
    return out
