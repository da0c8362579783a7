"""Formatting a new qcow2 image (qemu-img create -f qcow2 / blockdev-create).

The layout is QEMU's: header in cluster 0, refcount table in cluster 1, the first
refcount block in cluster 2, then the L1 table (and, with preallocation, L2 tables
followed by their data clusters).  The header cluster comes out byte-identical to
what ``qemu-img create -f qcow2`` writes for the same options.
"""

from __future__ import annotations

import struct

from blockd.drivers.base import BlockDriver, OpenFlags
from blockd.qmp.errors import GenericError

from . import header as H
from .refcount import set_entry

PREALLOC_MODES = ("off", "metadata", "falloc", "full")


def _validate(
    size: int,
    cluster_size: int,
    compat: str,
    backing_file: str | None,
    backing_fmt: str | None,
    lazy_refcounts: bool,
    preallocation: str,
    refcount_bits: int,
    extended_l2: bool = False,
) -> int:
    """QEMU's qcow2_co_create() option checks; returns the header version."""
    if compat in ("0.10", "v2"):
        version = 2
    elif compat in ("1.1", "v3"):
        version = 3
    else:
        raise GenericError(f"Parameter 'version' does not accept value '{compat}'")
    if (
        cluster_size < (1 << H.MIN_CLUSTER_BITS)
        or cluster_size > (1 << H.MAX_CLUSTER_BITS)
        or cluster_size & (cluster_size - 1)
    ):
        raise GenericError("Cluster size must be a power of two between 512 and 2048k")
    if extended_l2 and cluster_size < 16384:
        raise GenericError(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
        )
    if preallocation not in PREALLOC_MODES:
        raise GenericError(f"Parameter 'preallocation' does not accept value '{preallocation}'")
    if backing_fmt and not backing_file:
        raise GenericError("Backing format cannot be used without backing file")
    if backing_file and preallocation != "off":
        raise GenericError(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on"
        )
    if lazy_refcounts and version < 3:
        raise GenericError(
            "Lazy refcounts only supported with compatibility level 1.1 and above "
            "(use version=v3 or greater)"
        )
    if extended_l2 and version < 3:
        raise GenericError(
            "Extended L2 entries are only supported with compatibility level 1.1 "
            "and above (use version=v3 or greater)"
        )
    if refcount_bits > 64 or refcount_bits <= 0 or refcount_bits & (refcount_bits - 1):
        raise GenericError("Refcount width must be a power of two and may not exceed 64 bits")
    if version < 3 and refcount_bits != 16:
        raise GenericError(
            "Different refcount widths than 16 bits require compatibility level 1.1 "
            "or above (use version=v3 or greater)"
        )
    if size < 0:
        raise GenericError("Image size must be a non-negative number")
    return version


async def qcow2_create(
    file: BlockDriver,
    size: int,
    *,
    cluster_size: int = 65536,
    compat: str = "1.1",
    backing_file: str | None = None,
    backing_fmt: str | None = None,
    lazy_refcounts: bool = False,
    preallocation: str = "off",
    refcount_bits: int = 16,
    strict_size: bool = False,
    extended_l2: bool = False,
) -> None:
    """Format an opened, writable, empty protocol node as a qcow2 image of ``size``.

    ``strict_size`` is blockdev-create's behaviour (a size that is not a multiple
    of 512 is an error); qemu-img create rounds it up instead.  A size the L1
    table cannot map raises ``ImageTooLarge`` (errno EFBIG) with blockdev-create's
    text "Could not resize image: Failed to grow the L1 table: File too large".
    """
    from .driver import ImageTooLarge, Qcow2Driver

    version = _validate(
        size,
        cluster_size,
        compat,
        backing_file,
        backing_fmt,
        lazy_refcounts,
        preallocation,
        refcount_bits,
        extended_l2,
    )
    if size % 512:
        if strict_size:
            raise GenericError("Image size must be a multiple of 512 bytes")
        # qemu-img create rounds the size up to whole sectors.
        size = (size + 511) & ~511
    cluster_bits = cluster_size.bit_length() - 1
    order = refcount_bits.bit_length() - 1

    hdr = H.Qcow2Header(
        version=version,
        cluster_bits=cluster_bits,
        size=0,
        refcount_table_offset=cluster_size,
        refcount_table_clusters=1,
        refcount_order=order,
    )
    if lazy_refcounts:
        hdr.compatible_features |= H.COMPAT_LAZY_REFCOUNTS
    if extended_l2:
        hdr.incompatible_features |= H.INCOMPAT_EXTL2
    await file.write(0, H.serialize_header(hdr))
    # Refcount table naming the block in cluster 2, which counts clusters 0..2.
    table = bytearray(cluster_size)
    struct.pack_into(">Q", table, 0, 2 * cluster_size)
    block = bytearray(cluster_size)
    for c in range(3):
        set_entry(block, c, order, 1)
    await file.write(cluster_size, bytes(table) + bytes(block))

    drv = Qcow2Driver()
    drv.file = file
    await drv.open({"lazy-refcounts": False}, OpenFlags(read_only=False))
    # Nothing uses the image before this returns: one flush at the end replaces
    # the ordering barriers (a crash mid-create leaves no image worth keeping).
    drv.set_barriers(False)
    try:
        try:
            await drv.truncate(size, preallocation=preallocation)
        except ImageTooLarge as exc:
            raise ImageTooLarge(f"Could not resize image: {exc.desc}") from None
        if backing_file:
            await drv.change_backing_file(backing_file, backing_fmt)
        await drv.flush()
    finally:
        await drv.close()
