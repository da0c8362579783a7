"""BLOCK_IMAGE_CORRUPTED: qcow2's corruption reports reach QMP as QEMU's event.

A live qcow2 node whose L2 table points a guest cluster at metadata (the
refcount table, the L1 table, a refcount block) gets a write there: QEMU's
overlap check refuses it, marks the image corrupt, sends the event with the
host range and makes the node unusable (later requests: "No medium found").
Compared with qemu-system-x86_64 7.2 (QSD has no HMP to issue the write),
timestamps masked.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import time
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import require_tool
from tests.procs import RawClient, start_blockd

pytestmark = pytest.mark.qemu


def _corrupt_image(qemu_img: str, qemu_io: str, path: Path, target: int) -> None:
    """1 MiB qcow2 (64 KiB clusters) whose guest cluster 0 claims host offset
    ``target`` with the COPIED flag (written in place, no COW)."""
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    subprocess.run([qemu_io, "-c", "write -q 0 64k", str(path)], check=True)
    with open(path, "r+b") as f:
        hdr = f.read(104)
        l1_offset = struct.unpack_from(">Q", hdr, 40)[0]
        f.seek(l1_offset)
        l2_offset = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
        f.seek(l2_offset)
        f.write(struct.pack(">Q", (1 << 63) | target))


def _session(sock: str, img: str, writes: list[str]) -> list[str]:
    client = RawClient(sock, negotiate=True)
    out: list[str] = []
    cmds = [
        {"execute": "blockdev-add",
         "arguments": {"driver": "qcow2", "node-name": "disk",
                       "file": {"driver": "file", "filename": img, "node-name": "disk-file"}}},
        *({"execute": "human-monitor-command",
           "arguments": {"command-line": f'qemu-io disk "{w}"'}} for w in writes),
        {"execute": "query-version"},  # a marker: every event is in by now
    ]
    for cmd in cmds:
        client.send(json.dumps(cmd).encode() + b"\n")
        while True:
            line = client.line().decode()
            out.append(re.sub(r'"timestamp": \{[^}]*\}', '"timestamp": T', line))
            if '"event"' not in line:
                break
    client.close()
    return out[:-1]  # the version object differs


def _run_qemu(qemu: str, work: Path, img: str, writes: list[str], out: IO[str]) -> list[str]:
    sock = str(work / "q.sock")
    proc = subprocess.Popen(
        [qemu, "-machine", "none", "-nodefaults", "-display", "none",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdout=out, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        return _session(sock, img, writes)
    finally:
        proc.terminate()
        proc.wait()


@pytest.mark.parametrize(
    ("target", "writes"),
    [
        # refcount table (cluster 1 of a fresh image), a partial write
        (0x10000, ["write -P 0x11 4k 4k"]),
        # the active L1 table (cluster 3), a whole-cluster write
        (0x30000, ["write -P 0x11 0 64k"]),
        # a refcount block (cluster 2); the second write meets a corrupt image
        (0x20000, ["write -P 0x11 512 512", "read 0 512"]),
    ],
    ids=["refcount-table", "l1-table", "refcount-block"],
)
def test_block_image_corrupted_matches_qemu(tmp_path: Path, qemu_img: str, qemu_io: str,
                                             target: int, writes: list[str]) -> None:
    qemu = require_tool("qemu-system-x86_64")
    results: dict[str, list[str]] = {}
    printed: dict[str, list[str]] = {}
    for kind in ("qemu", "blockd"):
        work = tmp_path / kind
        work.mkdir()
        img = work / "c.qcow2"
        _corrupt_image(qemu_img, qemu_io, img, target)
        stdout = work / "stdout"
        with open(stdout, "w") as out:
            if kind == "qemu":
                results[kind] = _run_qemu(qemu, work, str(img), writes, out)
            else:
                daemon = start_blockd(work, stdout=out)
                try:
                    results[kind] = _session(daemon.socket, str(img), writes)
                finally:
                    daemon.stop()
        # qemu-io's lines on the daemon's stdout (timing figures masked).
        printed[kind] = [re.sub(r"\d+\.\d+ sec.*", "T", line)
                         for line in stdout.read_text().splitlines() if line.strip()]
        # Fatal: the image is marked corrupt on disk (qemu-img check says so).
        r = subprocess.run([qemu_img, "info", "--output=json", str(img)],
                           capture_output=True, text=True, check=True)
        assert json.loads(r.stdout)["format-specific"]["data"]["corrupt"] is True, kind
    assert results["blockd"] == results["qemu"]
    assert printed["blockd"] == printed["qemu"]
    assert any("BLOCK_IMAGE_CORRUPTED" in line for line in results["qemu"])
