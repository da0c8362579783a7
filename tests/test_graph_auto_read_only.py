"""Dynamic auto-read-only (QEMU 7.2 file-posix): a file node stays read-only
until a writer attaches, and fails then if the file cannot be written.  The
images are made immutable (chattr +i) so that even root cannot open them
read-write; compared with qemu-storage-daemon."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.graph_helpers import VM

pytestmark = pytest.mark.qemu


def _steps(d: Path) -> list[tuple[str, dict[str, Any]]]:
    i, r = str(d / "i.img"), str(d / "r.img")
    return [
        ("blockdev-add", {"driver": "file", "node-name": "f0", "filename": i}),
        ("blockdev-add", {"driver": "file", "node-name": "f1", "auto-read-only": True,
                          "filename": i}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q1", "file": "f1"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q2", "auto-read-only": True,
                          "file": {"driver": "file", "node-name": "q2f", "filename": i}}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "q3", "read-only": True,
                          "file": "f1"}),
        ("blockdev-add", {"driver": "raw", "node-name": "r1", "auto-read-only": True,
                          "file": {"driver": "file", "filename": r}}),
        ("query-named-block-nodes", {"flat": True}),
        ("blockdev-reopen", {"options": [{"driver": "raw", "node-name": "r1",
                                          "file": {"driver": "file", "filename": r}}]}),
        ("blockdev-reopen", {"options": [{"driver": "file", "node-name": "f1",
                                          "filename": i}]}),
        ("blockdev-reopen", {"options": [{"driver": "file", "node-name": "f1",
                                          "auto-read-only": True, "filename": i}]}),
        ("blockdev-del", {"node-name": "q3"}),
        ("blockdev-del", {"node-name": "f1"}),
        ("blockdev-del", {"node-name": "r1"}),
    ]


def _run(d: Path, qemu_img: str, qsd: bool) -> list[str]:
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(d / "i.img"), "1M"], check=True)
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(d / "r.img"), "1M"], check=True)
    imgs = [str(d / "i.img"), str(d / "r.img")]
    if subprocess.run(["chattr", "+i", *imgs], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here (needs root on ext4/xfs/tmpfs)")
    try:
        vm = VM(d, qsd=qsd)
        try:
            out = []
            for cmd, args in _steps(d):
                out.append(f"{cmd} -> {vm.qmp(cmd, **args)}".replace(str(d), "DIR"))
        finally:
            vm.shutdown()
    finally:
        subprocess.run(["chattr", "-i", *imgs], check=True)
    return out


def test_auto_read_only_like_qsd(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    q, b = tmp_path / "q", tmp_path / "b"
    q.mkdir()
    b.mkdir()
    want = _run(q, qemu_img, True)
    got = _run(b, qemu_img, False)
    import re

    for w, g in zip(want, got, strict=True):
        # Generated node names carry two random digits.
        assert re.sub(r"#block\d+", "#B", g) == re.sub(r"#block\d+", "#B", w)
