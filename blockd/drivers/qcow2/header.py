"""The qcow2 image header and its extensions (docs/interop/qcow2.txt).

Parsing validates like QEMU 7.2's ``qcow2_do_open`` and raises ``GenericError`` with
QEMU's words; serialising lays cluster 0 out exactly as ``qcow2_update_header``
does (header, backing-format extension, data-file extension, feature name table,
bitmaps extension, unknown extensions, end marker, backing file name), so images we
write carry a header byte-identical to the one ``qemu-img`` writes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from blockd.qmp.errors import GenericError

QCOW_MAGIC = 0x514649FB

V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104
# sizeof(QCowHeader) in QEMU: v3 fields + compression_type byte + 7 bytes padding.
FULL_HEADER_LENGTH = 112

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_CRYPTO_HEADER = 0x0537BE77
EXT_BITMAPS = 0x23852875
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_MASK = 0x1F

COMPAT_LAZY_REFCOUNTS = 1 << 0

AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
AUTOCLEAR_MASK = 0x3

FEAT_TYPE_INCOMPATIBLE = 0
FEAT_TYPE_COMPATIBLE = 1
FEAT_TYPE_AUTOCLEAR = 2

# The feature name table QEMU 7.2 writes into every v3 image, in its order.
FEATURE_TABLE: tuple[tuple[int, int, str], ...] = (
    (FEAT_TYPE_INCOMPATIBLE, 0, "dirty bit"),
    (FEAT_TYPE_INCOMPATIBLE, 1, "corrupt bit"),
    (FEAT_TYPE_INCOMPATIBLE, 2, "external data file"),
    (FEAT_TYPE_INCOMPATIBLE, 3, "compression type"),
    (FEAT_TYPE_INCOMPATIBLE, 4, "extended L2 entries"),
    (FEAT_TYPE_COMPATIBLE, 0, "lazy refcounts"),
    (FEAT_TYPE_AUTOCLEAR, 0, "bitmaps"),
    (FEAT_TYPE_AUTOCLEAR, 1, "raw external data"),
)

MAX_BACKING_NAME = 1023
MAX_BACKING_FORMAT = 15  # sizeof(bs->backing_format) - 1

_V2 = struct.Struct(">IIQIIQIIQQIIQ")  # 72 bytes
_V3_TAIL = struct.Struct(">QQQII")  # 32 bytes, offsets 72..104


@dataclass
class Extension:
    """A header extension kept verbatim (unknown ones must survive a header rewrite)."""

    magic: int
    data: bytes


@dataclass
class Qcow2Header:
    """All fields of the on-disk header plus the decoded extensions."""

    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = FULL_HEADER_LENGTH
    compression_type: int = 0
    # Header bytes past sizeof(QCowHeader) that a newer writer put there.
    unknown_fields: bytes = b""
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    bitmaps_ext: bytes | None = None
    crypto_ext: bytes | None = None
    unknown_extensions: list[Extension] = field(default_factory=list)
    # Feature name table found in the image: (type, bit) -> name.
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)
    # Errors QEMU reports later in the open sequence than the header checks.
    extension_error: str | None = None
    backing_error: str | None = None

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order


def _feature_report(names: dict[tuple[int, int], str], mask: int) -> str:
    """The text of QEMU's report_unsupported_feature()."""
    parts: list[str] = []
    for (ftype, bit), name in names.items():
        if ftype == FEAT_TYPE_INCOMPATIBLE and mask & (1 << bit):
            parts.append(name[:46])
            mask &= ~(1 << bit)
    if mask:
        parts.append(f"Unknown incompatible feature: {mask:x}")
    return "Unsupported qcow2 feature(s): " + ", ".join(parts)


def _read_extensions(buf: bytes, start: int, end: int, hdr: Qcow2Header, strict: bool) -> None:
    """Decode the extension area [start, end) of cluster 0 into hdr.

    With strict=False (used only to word the unsupported-feature error) damage is
    ignored, as QEMU passes errp=NULL there.
    """
    off = start
    while off < end:
        if off + 8 > len(buf):
            if strict:
                raise GenericError("Header extension too large")
            return
        magic, length = struct.unpack_from(">II", buf, off)
        off += 8
        if off > end or length > end - off:
            if strict:
                raise GenericError("Header extension too large")
            return
        data = bytes(buf[off : off + length])
        if magic == EXT_END:
            return
        if magic == EXT_BACKING_FORMAT:
            if length > MAX_BACKING_FORMAT:
                if strict:
                    raise GenericError(f"ERROR: ext_backing_format: len={length} too large (>=16)")
                return
            hdr.backing_format = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif magic == EXT_FEATURE_TABLE:
            for i in range(0, length - 47, 48):
                ftype, bit = data[i], data[i + 1]
                name = data[i + 2 : i + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
                hdr.feature_names[(ftype, bit)] = name
        elif magic == EXT_CRYPTO_HEADER:
            hdr.crypto_ext = data
        elif magic == EXT_BITMAPS:
            hdr.bitmaps_ext = data
        elif magic == EXT_DATA_FILE:
            hdr.data_file = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        else:
            hdr.unknown_extensions.append(Extension(magic, data))
        off += (length + 7) & ~7


def parse_header(buf: bytes, *, check_mode: bool = False, read_write: bool = False) -> Qcow2Header:
    """Parse and validate cluster 0 (``buf`` should hold at least one cluster).

    Raises GenericError with QEMU 7.2's text for everything ``qcow2_do_open``
    rejects before it touches the tables.
    """
    if len(buf) < _V2.size:
        # bdrv_pread of a short file reads zeros past EOF: the magic check fails.
        buf = bytes(buf) + bytes(_V2.size - len(buf))
    (
        magic,
        version,
        backing_file_offset,
        backing_file_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = _V2.unpack_from(buf, 0)
    if magic != QCOW_MAGIC:
        raise GenericError("Image is not in qcow2 format")
    if version < 2 or version > 3:
        raise GenericError(f"Unsupported qcow2 version {version}")
    if cluster_bits < MIN_CLUSTER_BITS or cluster_bits > MAX_CLUSTER_BITS:
        raise GenericError(f"Unsupported cluster size: 2^{cluster_bits}")
    cluster_size = 1 << cluster_bits
    if len(buf) < max(cluster_size, FULL_HEADER_LENGTH):
        buf = bytes(buf) + bytes(max(cluster_size, FULL_HEADER_LENGTH) - len(buf))
    hdr = Qcow2Header(
        version=version,
        backing_file_offset=backing_file_offset,
        backing_file_size=backing_file_size,
        cluster_bits=cluster_bits,
        size=size,
        crypt_method=crypt_method,
        l1_size=l1_size,
        l1_table_offset=l1_table_offset,
        refcount_table_offset=refcount_table_offset,
        refcount_table_clusters=refcount_table_clusters,
        nb_snapshots=nb_snapshots,
        snapshots_offset=snapshots_offset,
    )
    if version == 2:
        hdr.header_length = V2_HEADER_LENGTH
    else:
        (
            hdr.incompatible_features,
            hdr.compatible_features,
            hdr.autoclear_features,
            hdr.refcount_order,
            hdr.header_length,
        ) = _V3_TAIL.unpack_from(buf, 72)
        if hdr.header_length < V3_HEADER_LENGTH:
            raise GenericError("qcow2 header too short")
    if hdr.header_length > cluster_size:
        raise GenericError("qcow2 header exceeds cluster size")
    if hdr.header_length > FULL_HEADER_LENGTH:
        hdr.unknown_fields = bytes(buf[FULL_HEADER_LENGTH : hdr.header_length])
    if backing_file_offset > cluster_size:
        raise GenericError("Invalid backing file offset")
    ext_end = backing_file_offset if backing_file_offset else cluster_size

    if hdr.header_length > V3_HEADER_LENGTH:
        hdr.compression_type = buf[V3_HEADER_LENGTH]
    if hdr.compression_type != 0:
        # Only zlib is built into blockd (QEMU without zstd says the same).
        raise GenericError(f"qcow2: unknown compression type: {hdr.compression_type}")
    if hdr.incompatible_features & INCOMPAT_COMPRESSION:
        raise GenericError("qcow2: Compression type incompatible feature bit must not be set")

    unsupported = hdr.incompatible_features & ~INCOMPAT_MASK
    if unsupported:
        probe = Qcow2Header()
        _read_extensions(buf, hdr.header_length, ext_end, probe, strict=False)
        raise GenericError(_feature_report(probe.feature_names, unsupported))
    if hdr.incompatible_features & INCOMPAT_CORRUPT and read_write and not check_mode:
        raise GenericError("qcow2: Image is corrupt; cannot be opened read/write")
    if hdr.refcount_order > 6:
        raise GenericError("Reference count entry width too large; may not exceed 64 bits")

    # QEMU reads the extensions and the backing file name only after it has
    # validated the tables and the options: keep their errors for the opener.
    try:
        _read_extensions(buf, hdr.header_length, ext_end, hdr, strict=True)
    except GenericError as exc:
        hdr.extension_error = exc.desc

    if backing_file_offset:
        length = backing_file_size
        if length > min(MAX_BACKING_NAME, cluster_size - backing_file_offset):
            hdr.backing_error = "Backing file name too long"
        else:
            raw = bytes(buf[backing_file_offset : backing_file_offset + length])
            hdr.backing_file = raw.decode("utf-8", "surrogateescape")
    return hdr


def feature_table_bytes() -> bytes:
    """The feature name table extension payload QEMU writes (48 bytes per entry)."""
    out = bytearray()
    for ftype, bit, name in FEATURE_TABLE:
        out += struct.pack(">BB46s", ftype, bit, name.encode())
    return bytes(out)


def _ext(magic: int, data: bytes) -> bytes:
    pad = (-len(data)) % 8
    return struct.pack(">II", magic, len(data)) + data + bytes(pad)


def serialize_header(hdr: Qcow2Header) -> bytes:
    """Lay out cluster 0 like qcow2_update_header(); returns exactly one cluster.

    Raises GenericError when the header does not fit in a cluster.  Updates
    ``hdr.backing_file_offset/size`` and ``hdr.header_length`` to what was written.
    """
    cluster_size = hdr.cluster_size
    if hdr.version >= 3:
        header_length = FULL_HEADER_LENGTH + len(hdr.unknown_fields)
    else:
        header_length = V2_HEADER_LENGTH
    body = bytearray()
    if hdr.backing_format:
        body += _ext(EXT_BACKING_FORMAT, hdr.backing_format.encode())
    if hdr.data_file is not None:
        body += _ext(EXT_DATA_FILE, hdr.data_file.encode())
    if hdr.crypto_ext is not None:
        body += _ext(EXT_CRYPTO_HEADER, hdr.crypto_ext)
    if hdr.version >= 3 and cluster_size > 4096:
        # QEMU leaves the name table out of small clusters (room for the backing name).
        body += _ext(EXT_FEATURE_TABLE, feature_table_bytes())
    if hdr.bitmaps_ext is not None and hdr.autoclear_features & AUTOCLEAR_BITMAPS:
        body += _ext(EXT_BITMAPS, hdr.bitmaps_ext)
    for ext in hdr.unknown_extensions:
        body += _ext(ext.magic, ext.data)
    body += struct.pack(">II", EXT_END, 0)
    backing = b""
    if hdr.backing_file:
        backing = hdr.backing_file.encode("utf-8", "surrogateescape")
    total = header_length + len(body) + len(backing)
    if total > cluster_size:
        raise GenericError("Could not update qcow2 header: File too large")
    if backing:
        hdr.backing_file_offset = header_length + len(body)
        hdr.backing_file_size = len(backing)
    else:
        hdr.backing_file_offset = 0
        hdr.backing_file_size = 0
    hdr.header_length = header_length
    out = bytearray(cluster_size)
    _V2.pack_into(
        out,
        0,
        QCOW_MAGIC,
        hdr.version,
        hdr.backing_file_offset,
        hdr.backing_file_size,
        hdr.cluster_bits,
        hdr.size,
        hdr.crypt_method,
        hdr.l1_size,
        hdr.l1_table_offset,
        hdr.refcount_table_offset,
        hdr.refcount_table_clusters,
        hdr.nb_snapshots,
        hdr.snapshots_offset,
    )
    if hdr.version >= 3:
        _V3_TAIL.pack_into(
            out,
            72,
            hdr.incompatible_features,
            hdr.compatible_features,
            hdr.autoclear_features,
            hdr.refcount_order,
            header_length,
        )
        out[V3_HEADER_LENGTH] = hdr.compression_type
        out[FULL_HEADER_LENGTH:header_length] = hdr.unknown_fields
    pos = header_length
    out[pos : pos + len(body)] = body
    pos += len(body)
    out[pos : pos + len(backing)] = backing
    return bytes(out)


# Byte offsets of fields that are rewritten in place.
OFF_L1_SIZE = 36
OFF_L1_TABLE_OFFSET = 40
OFF_REFCOUNT_TABLE_OFFSET = 48
OFF_INCOMPATIBLE = 72
