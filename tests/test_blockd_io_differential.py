"""Randomized differential test: the same random I/O through blockd-io and qemu-io.

Two copies of an image get the same sequence of writes, zero writes, discards and
compressed writes; the command output must match, both images must pass qemu-img
check, blockd's image must hold exactly what was written (discarded ranges are
unspecified), and the two images must be identical (qemu-img compare) unless
QEMU's own image contradicts the written data (a QEMU bug, see _differential).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.qemu

BLOCKD_IO = str(Path(sys.executable).with_name("blockd-io"))
_RATE = re.compile(r"ops; [0-9:.]+ sec \([^)]*\)$", re.M)


def mask(text: str) -> str:
    """Hide the timing numbers and the program name."""
    return re.sub(r"(?:/[\w.\-/]*/)?\b(qemu-io|blockd-io)\b", "PROG", _RATE.sub("ops; T", text))

SIZE = 4 << 20
CLUSTER = 64 << 10


@st.composite
def io_op(draw: st.DrawFn, compressed: bool) -> str:
    kinds = ["write", "write", "zero", "zero-unmap", "discard"]
    if compressed:
        kinds.append("compressed")
    kind = draw(st.sampled_from(kinds))
    if kind == "compressed":
        cluster = draw(st.integers(0, SIZE // CLUSTER - 1))
        pattern = draw(st.integers(0, 255))
        return f"write -c -P {pattern} {cluster * CLUSTER} {CLUSTER}"
    # Mostly sector-aligned requests, sometimes arbitrary bytes.
    unit = draw(st.sampled_from([512, 4096, CLUSTER, 1]))
    offset = draw(st.integers(0, SIZE // unit - 1)) * unit
    length = draw(st.integers(1, min(256 << 10, SIZE - offset) // unit or 1)) * unit
    length = min(length, SIZE - offset)
    if kind == "write":
        pattern = draw(st.integers(0, 255))
        return f"write -P {pattern} {offset} {length}"
    if kind == "zero":
        return f"write -z {offset} {length}"
    if kind == "zero-unmap":
        return f"write -z -u {offset} {length}"
    return f"discard {offset} {length}"


def _apply(tool: str, fmt: str, img: str, ops: list[str]) -> tuple[str, str, int]:
    args = [tool, "-f", fmt]
    for op in ops:
        args += ["-c", op]
    args += ["-c", "map", img]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return mask(r.stdout), mask(r.stderr), r.returncode


class Model:
    """Expected guest contents; discarded bytes are unspecified (mask 0)."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.known = bytearray(b"\x01") * size

    def apply(self, op: str) -> None:
        words = op.split()
        offset, length = int(words[-2]), int(words[-1])
        end = offset + length
        if words[0] == "discard":
            self.known[offset:end] = bytes(length)
            return
        if "-z" in words:
            value = 0
        else:
            value = int(words[words.index("-P") + 1])
        self.data[offset:end] = bytes([value]) * length
        self.known[offset:end] = b"\x01" * length

    def mismatch(self, content: bytes) -> int | None:
        """First offset where content contradicts the model, or None."""
        for i in range(0, len(content), CLUSTER):
            a = content[i : i + CLUSTER]
            b = self.data[i : i + CLUSTER]
            k = self.known[i : i + CLUSTER]
            if a == b:
                continue
            for j in range(len(a)):
                if k[j] and a[j] != b[j]:
                    return i + j
        return None


def _guest_bytes(qemu_img: str, fmt: str, img: str, out: str) -> bytes:
    subprocess.run([qemu_img, "convert", "-f", fmt, "-O", "raw", img, out], check=True,
                   capture_output=True)
    return Path(out).read_bytes()


def _differential(qemu_img: str, qemu_io: str, fmt: str, ops: list[str]) -> None:
    model = Model(SIZE)
    with tempfile.TemporaryDirectory(prefix="blockd-diff-") as d:
        a = str(Path(d) / f"a.{fmt}")
        b = str(Path(d) / f"b.{fmt}")
        subprocess.run([qemu_img, "create", "-f", fmt, a, str(SIZE)], check=True,
                       capture_output=True)
        shutil.copy(a, b)
        out_q = _apply(qemu_io, fmt, a, ops)
        out_b = _apply(BLOCKD_IO, fmt, b, ops)
        assert out_b == out_q
        # Requests QEMU refuses (e.g. a compressed write over an allocated cluster)
        # print "... failed" instead of the two report lines and change nothing.
        lines = out_b[0].splitlines()
        pos = 0
        for op in ops:
            if " failed: " in lines[pos]:
                pos += 1
                continue
            model.apply(op)
            pos += 2
        qemu_check = ""
        if fmt == "qcow2":
            r = subprocess.run([qemu_img, "check", b], capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            r = subprocess.run([qemu_img, "check", a], capture_output=True, text=True)
            if r.returncode != 0:
                qemu_check = r.stderr.strip()
        # blockd must always hold what the guest wrote.
        bad = model.mismatch(_guest_bytes(qemu_img, fmt, b, str(Path(d) / "b.out")))
        assert bad is None, f"blockd image differs from the written data at {bad}"
        qbad = model.mismatch(_guest_bytes(qemu_img, fmt, a, str(Path(d) / "a.out")))
        if qbad is not None or qemu_check:
            # QEMU 7.2 itself corrupted its image on this sequence (seen: a compressed
            # cluster's host space reused while still referenced, leaking stale bytes
            # and failing qemu-img check).  It is no oracle here; blockd's image was
            # checked against the written data and by qemu-img check above.
            note(f"qemu-io's image is wrong: data mismatch at {qbad}; check: {qemu_check}")
            return
        r = subprocess.run([qemu_img, "compare", "-f", fmt, "-F", fmt, a, b],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_qcow2_random_io_matches_qemu_io(qemu_img: str, qemu_io: str) -> None:
    @_settings(30)
    @given(st.lists(io_op(compressed=True), min_size=1, max_size=12))
    def check(ops: list[str]) -> None:
        _differential(qemu_img, qemu_io, "qcow2", ops)

    check()


def test_raw_random_io_matches_qemu_io(qemu_img: str, qemu_io: str) -> None:
    @_settings(10)
    @given(st.lists(io_op(compressed=False), min_size=1, max_size=12))
    def check(ops: list[str]) -> None:
        _differential(qemu_img, qemu_io, "raw", ops)

    check()
