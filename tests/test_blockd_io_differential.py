"""Randomized differential test: the same random I/O through blockd-io and qemu-io.

Two copies of an image get the same sequence of writes, zero writes, discards and
compressed writes; the guest-visible contents must be identical (qemu-img compare),
both images must pass qemu-img check, and the command output must match.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
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


def _differential(qemu_img: str, qemu_io: str, fmt: str, ops: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="blockd-diff-") as d:
        a = str(Path(d) / f"a.{fmt}")
        b = str(Path(d) / f"b.{fmt}")
        subprocess.run([qemu_img, "create", "-f", fmt, a, str(SIZE)], check=True,
                       capture_output=True)
        shutil.copy(a, b)
        out_q = _apply(qemu_io, fmt, a, ops)
        out_b = _apply(BLOCKD_IO, fmt, b, ops)
        assert out_b == out_q
        r = subprocess.run([qemu_img, "compare", "-f", fmt, "-F", fmt, a, b],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        if fmt == "qcow2":
            for img in (a, b):
                r = subprocess.run([qemu_img, "check", img], capture_output=True, text=True)
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
