"""Damaged and invalid qcow2 images: QEMU's error texts, no crash, file untouched."""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from test_qcow2_util import close, open_ro, open_rw, run

from blockd.qmp.errors import GenericError

pytestmark = pytest.mark.qemu

MiB = 1 << 20


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _qemu_open_error(qemu_io: str, path: Path, *, read_only: bool) -> str:
    args = [qemu_io, "-f", "qcow2", "-c", "quit", str(path)]
    if read_only:
        args.insert(1, "-r")
    p = run(*args, check=False)
    m = re.search(r"can't open device [^:]*: (.*)", p.stderr)
    assert m, p.stderr
    return m.group(1).strip()


def _feature_table_rename(path: Path) -> None:
    # Make the table name bit 5 "frobnicate" (it is the "extended L2" slot).
    data = path.read_bytes()
    i = data.index(b"\x00\x04extended L2 entries")
    _poke(path, i, b"\x00\x05frobnicate".ljust(48, b"\0"))
    _poke(path, 72, struct.pack(">Q", 1 << 5 | 1 << 6))


CASES: dict[str, Callable[[Path], None]] = {
    "bad-magic": lambda p: _poke(p, 0, b"QFI\x00"),
    "version-4": lambda p: _poke(p, 4, struct.pack(">I", 4)),
    "version-1": lambda p: _poke(p, 4, struct.pack(">I", 1)),
    "unknown-incompat": lambda p: _poke(p, 72, struct.pack(">Q", 1 << 5)),
    "named-incompat": _feature_table_rename,
    "cluster-bits-8": lambda p: _poke(p, 20, struct.pack(">I", 8)),
    "cluster-bits-22": lambda p: _poke(p, 20, struct.pack(">I", 22)),
    "header-too-short": lambda p: _poke(p, 100, struct.pack(">I", 72)),
    "refcount-order-7": lambda p: _poke(p, 96, struct.pack(">I", 7)),
    "no-refcount-table": lambda p: _poke(p, 56, struct.pack(">I", 0)),
    "reftable-unaligned": lambda p: _poke(p, 48, struct.pack(">Q", 0x10200)),
    "reftable-too-large": lambda p: _poke(p, 56, struct.pack(">I", 0x100000)),
    "l1-unaligned": lambda p: _poke(p, 40, struct.pack(">Q", 0x30008)),
    "l1-too-small": lambda p: _poke(p, 36, struct.pack(">I", 0)),
    "l1-too-large": lambda p: _poke(p, 36, struct.pack(">I", 0x10000000)),
    "snapshot-table-unaligned": lambda p: _poke(p, 60, struct.pack(">IQ", 1, 0x123)),
    "backing-offset-invalid": lambda p: _poke(p, 8, struct.pack(">QI", 0x20000, 4)),
    "backing-name-too-long": lambda p: _poke(p, 8, struct.pack(">QI", 0x200, 2000)),
    "truncated-50": lambda p: p.write_bytes(p.read_bytes()[:50]),
    "empty": lambda p: p.write_bytes(b""),
    "corrupt-bit": lambda p: _poke(p, 72, struct.pack(">Q", 2)),
    # The feature table extension claims more bytes than the cluster holds.
    "extension-too-large": lambda p: _poke(p, 116, struct.pack(">I", 0x10000)),
    # ... and both a damaged extension and a too-small L1: the L1 error comes first.
    "extension-and-l1": lambda p: (
        _poke(p, 116, struct.pack(">I", 0x10000)),
        _poke(p, 36, struct.pack(">I", 0)),
    )[0],
    "data-file-bit": lambda p: _poke(p, 72, struct.pack(">Q", 4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("read_only", [True, False])
async def test_open_errors_match_qemu(
    tmp_path: Path, qemu_img: str, qemu_io: str, case: str, read_only: bool
) -> None:
    img = tmp_path / "x.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(img), "1G")
    CASES[case](img)
    before = _digest(img)
    p = run(
        qemu_io,
        *([] if not read_only else ["-r"]),
        "-f",
        "qcow2",
        "-c",
        "quit",
        str(img),
        check=False,
    )
    if "can't open" not in p.stderr:
        # QEMU accepts it (e.g. corrupt bit read-only): so must blockd.
        drv = await (open_ro(img) if read_only else open_rw(img))
        await close(drv)
        assert _digest(img) == before
        return
    expected = _qemu_open_error(qemu_io, img, read_only=read_only)
    assert _digest(img) == before
    with pytest.raises(GenericError) as exc:
        drv = await (open_ro(img) if read_only else open_rw(img))
        await close(drv)
    assert exc.value.desc == expected
    assert _digest(img) == before


async def _image_with_data(tmp_path: Path, qemu_img: str, qemu_io: str) -> Path:
    img = tmp_path / "d.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(img), "1G")
    run(qemu_io, "-f", "qcow2", "-c", "write -P 0x5a 0 128k", str(img))
    return img


async def test_l2_table_past_eof(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    _poke(img, 0x30000, struct.pack(">Q", (1 << 63) | 0x10000000))
    before = _digest(img)
    drv = await open_ro(img)
    try:
        with pytest.raises(OSError, match="beyond the end of the image file"):
            await drv.read(0, 4096)
        # The rest of the image still works.
        assert await drv.read(600 * MiB, 4096) == bytes(4096)
    finally:
        await close(drv)
    assert _digest(img) == before


async def test_data_cluster_past_eof(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    _poke(img, 0x40000, struct.pack(">Q", (1 << 63) | 0x40000000))
    before = _digest(img)
    drv = await open_ro(img)
    try:
        with pytest.raises(OSError):
            await drv.read(0, 4096)
        assert await drv.read(65536, 4096) == b"\x5a" * 4096
    finally:
        await close(drv)
    assert _digest(img) == before


async def test_unaligned_l2_read_only_untouched(
    tmp_path: Path, qemu_img: str, qemu_io: str, capfd: pytest.CaptureFixture[str]
) -> None:
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    _poke(img, 0x30000, struct.pack(">Q", (1 << 63) | 0x40200))
    before = _digest(img)
    drv = await open_ro(img)
    try:
        with pytest.raises(OSError):
            await drv.read(0, 4096)
    finally:
        await close(drv)
    assert _digest(img) == before
    err = capfd.readouterr().err
    assert (
        "qcow2: Image is corrupt: L2 table offset 0x40200 unaligned (L1 index: 0); "
        "further non-fatal corruption events will be suppressed"
    ) in err


async def test_unaligned_l2_read_write_marks_corrupt(
    tmp_path: Path, qemu_img: str, qemu_io: str
) -> None:
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    _poke(img, 0x30000, struct.pack(">Q", (1 << 63) | 0x40200))
    drv = await open_rw(img)
    try:
        with pytest.raises(OSError):
            await drv.write(0, b"x" * 512)
        assert drv.corrupt
    finally:
        await close(drv)
    info = run(qemu_img, "info", "--output=json", str(img)).stdout
    assert '"corrupt": true' in info
    # Like QEMU, a corrupt image cannot be opened read/write again.
    with pytest.raises(GenericError, match="Image is corrupt; cannot be opened read/write"):
        await open_rw(img)


async def test_check_reports_and_repairs(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    # refcount of the L2 table (cluster 4) at the 16-bit maximum: a leak, plus a
    # wrong OFLAG_COPIED; the refcount table (cluster 1) counted twice: a leak.
    _poke(img, 0x20000 + 4 * 2, struct.pack(">H", 0xFFFF))
    _poke(img, 0x20000 + 1 * 2, struct.pack(">H", 2))
    qemu = run(qemu_img, "check", str(img), check=False)
    drv = await open_ro(img)
    try:
        res = await drv.check()
    finally:
        await close(drv)
    expected_lines = [ln for ln in qemu.stderr.splitlines() if ln]
    assert res.messages == expected_lines
    assert (res.leaks, res.corruptions) == (2, 1)
    drv = await open_rw(img)
    try:
        res = await drv.check("all")
        assert (res.leaks_fixed, res.corruptions_fixed) == (2, 0)
        again = await drv.check()
        assert (again.leaks, again.corruptions) == (0, 0)
    finally:
        await close(drv)
    p = run(qemu_img, "check", str(img), check=False)
    assert p.returncode == 0, p.stdout + p.stderr


async def test_check_leaks_only(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    _poke(img, 0x20000 + 5 * 2, struct.pack(">H", 2))  # data cluster: leak
    drv = await open_rw(img)
    try:
        res = await drv.check("leaks")
        assert res.messages == [
            "Leaked cluster 5 refcount=2 reference=1",
            "Repairing cluster 5 refcount=2 reference=1",
        ]
    finally:
        await close(drv)
    p = run(qemu_img, "check", str(img), check=False)
    assert p.returncode == 0, p.stdout + p.stderr


async def test_refcount_width_one_never_overflows(tmp_path: Path, qemu_img: str) -> None:
    """With 1-bit refcounts compressed clusters cannot share a host cluster."""
    img = tmp_path / "r1.qcow2"
    run(qemu_img, "create", "-f", "qcow2", "-o", "refcount_bits=1", str(img), "4M")
    drv = await open_rw(img)
    try:
        for i in range(4):
            await drv.write(i * 65536, bytes([i + 1]) * 65536, compressed=True)
    finally:
        await close(drv)
    p = run(qemu_img, "check", str(img), check=False)
    assert p.returncode == 0, p.stdout + p.stderr


async def test_refcount_overflow_is_an_error(tmp_path: Path, qemu_img: str) -> None:
    """A cluster already at the maximum refcount cannot take another reference."""
    img = tmp_path / "ov.qcow2"
    run(qemu_img, "create", "-f", "qcow2", "-o", "refcount_bits=1", str(img), "4M")
    drv = await open_rw(img)
    try:
        with pytest.raises(OSError):
            await drv.rc.update(0, 512, 1)  # header cluster already has refcount 1
        assert await drv.rc.get(0) == 1
    finally:
        await close(drv)


DAMAGE: dict[str, list[tuple[int, int]]] = {
    # (refcount block entry index, value) pokes into the first refcount block
    "leaks": [(1, 2), (5, 3)],
    "leak-and-copied": [(4, 0xFFFF)],
    "zero-refcount": [(5, 0)],
    "mixed": [(1, 2), (4, 0xFFFF), (6, 0)],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("mode", [None, "leaks", "all"])
async def test_check_messages_match_qemu(
    tmp_path: Path, qemu_img: str, qemu_io: str, damage: str, mode: str | None
) -> None:
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    for idx, value in DAMAGE[damage]:
        _poke(img, 0x20000 + idx * 2, struct.pack(">H", value))
    ref = tmp_path / "ref.qcow2"
    ref.write_bytes(img.read_bytes())
    args = [qemu_img, "check"] + (["-r", mode] if mode else []) + [str(ref)]
    qemu = run(*args, check=False)
    expected = [ln for ln in qemu.stderr.splitlines() if ln and not ln.startswith("qemu-img: ")]
    drv = await (open_rw(img) if mode else open_ro(img))
    try:
        res = await drv.check(mode)
    finally:
        await close(drv)
    assert res.messages == expected
    if "Check failed" in qemu.stderr:
        assert res.ret < 0
    elif mode == "all" or (mode == "leaks" and damage == "leaks"):
        p = run(qemu_img, "check", str(img), check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        assert img.read_bytes()[:65536] == ref.read_bytes()[:65536]


def _structural(kind: str, path: Path) -> None:
    if kind == "l2-entry-unaligned":
        _poke(path, 0x40000, struct.pack(">Q", (1 << 63) | 0x50200))
    elif kind == "l1-entry-unaligned":
        _poke(path, 0x30000, struct.pack(">Q", (1 << 63) | 0x40200))
    elif kind == "data-past-eof":
        _poke(path, 0x40008, struct.pack(">Q", (1 << 63) | 0x10000000))
    elif kind == "refblock-past-eof":
        _poke(path, 0x10008, struct.pack(">Q", 0x10000000))
    elif kind == "compressed-copied":
        with open(path, "r+b") as f:
            f.seek(0x40000 + 16 * 8)
            (e,) = struct.unpack(">Q", f.read(8))
        _poke(path, 0x40000 + 16 * 8, struct.pack(">Q", e | (1 << 63)))


@pytest.mark.parametrize(
    "kind",
    [
        "l2-entry-unaligned",
        "l1-entry-unaligned",
        "data-past-eof",
        "refblock-past-eof",
        "compressed-copied",
    ],
)
@pytest.mark.parametrize("mode", [None, "leaks", "all"])
async def test_structural_damage_messages_match_qemu(
    tmp_path: Path, qemu_img: str, qemu_io: str, kind: str, mode: str | None
) -> None:
    img = tmp_path / "s.qcow2"
    run(qemu_img, "create", "-f", "qcow2", str(img), "1G")
    run(qemu_io, "-f", "qcow2", "-c", "write 0 128k", "-c", "write -c 1M 64k", str(img))
    _structural(kind, img)
    ref = tmp_path / "ref.qcow2"
    ref.write_bytes(img.read_bytes())
    qemu = run(qemu_img, "check", *(["-r", mode] if mode else []), str(ref), check=False)
    # qemu-img re-checks after a repair; compare the driver's first pass only.
    lines = [ln for ln in qemu.stderr.splitlines() if ln and not ln.startswith("qemu-img: ")]
    drv = await (open_rw(img) if mode else open_ro(img))
    try:
        res = await drv.check(mode)
    finally:
        await close(drv)
    assert res.messages == lines[: len(res.messages)]
    rest = lines[len(res.messages) :]
    if res.leaks_fixed or res.corruptions_fixed:
        # What is left is qemu-img's second check of the repaired image.
        drv = await open_ro(img)
        try:
            again = await drv.check()
        finally:
            await close(drv)
        assert again.messages == rest
    else:
        assert rest == []


@pytest.mark.parametrize(
    "target,kind",
    [
        (0x10000, "refcount table"),
        (0x20000, "refcount block"),
        (0x30000, "active L1 table"),
        (0x40000, "active L2 table"),
    ],
)
async def test_overlap_check_prevents_metadata_overwrite(
    tmp_path: Path,
    qemu_img: str,
    qemu_io: str,
    capfd: pytest.CaptureFixture[str],
    target: int,
    kind: str,
) -> None:
    """A data cluster entry pointing at metadata: the write fails, the image is
    marked corrupt and the metadata stays intact, as with QEMU."""
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    _poke(img, 0x40008, struct.pack(">Q", (1 << 63) | target))
    ref = tmp_path / "ref.qcow2"
    ref.write_bytes(img.read_bytes())
    qemu = run(qemu_io, "-f", "qcow2", "-c", "write -P 9 65536 4096", str(ref), check=False)
    meta_before = img.read_bytes()[target : target + 65536]
    drv = await open_rw(img)
    try:
        with pytest.raises(OSError):
            await drv.write(65536, b"\x09" * 4096)
        assert drv.corrupt
    finally:
        await close(drv)
    assert img.read_bytes()[target : target + 65536] == meta_before
    expected = (
        f"qcow2: Marking image as corrupt: Preventing invalid write on metadata "
        f"(overlaps with {kind}); further corruption events will be suppressed"
    )
    assert expected in qemu.stderr
    assert expected in capfd.readouterr().err
    assert img.read_bytes()[:512] == ref.read_bytes()[:512]


async def test_overlap_check_none_allows_it(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    img = await _image_with_data(tmp_path, qemu_img, qemu_io)
    _poke(img, 0x40008, struct.pack(">Q", (1 << 63) | 0x30000))
    drv = await open_rw(img, options={"overlap-check": "none"})
    try:
        await drv.write(65536, b"\x09" * 8)
        assert not drv.corrupt
    finally:
        await close(drv)
    assert img.read_bytes()[0x30000:0x30008] == b"\x09" * 8


@pytest.mark.parametrize("fmt", ["luks", "aes"])
async def test_encrypted_image_refused_like_qemu(
    tmp_path: Path, qemu_img: str, qemu_io: str, fmt: str
) -> None:
    img = tmp_path / "e.qcow2"
    run(
        qemu_img,
        "create",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=abc",
        "-o",
        f"encrypt.format={fmt},encrypt.key-secret=s0"
        + (",encrypt.iter-time=10" if fmt == "luks" else ""),
        str(img),
        "1M",
    )
    expected = _qemu_open_error(qemu_io, img, read_only=True)
    before = _digest(img)
    with pytest.raises(GenericError) as exc:
        drv = await open_ro(img)
        await close(drv)
    assert exc.value.desc == expected
    assert _digest(img) == before
