"""``detect-zeroes`` applied to guest writes, against real QEMU 7.2 (qemu-system:
QSD has no HMP to write with).  The images' allocation maps must match."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.procs import RawClient, start_blockd

MODES = ("off", "on", "unmap")


def _session(sock: str, d: Path) -> list[bytes]:
    client = RawClient(sock, negotiate=True)
    replies = []
    for mode in MODES:
        args: dict[str, object] = {
            "driver": "qcow2", "node-name": mode, "detect-zeroes": mode,
            "file": {"driver": "file", "filename": str(d / f"{mode}.qcow2")}}
        if mode == "unmap":
            args["discard"] = "unmap"
        cmds: list[dict[str, object]] = [{"execute": "blockdev-add", "arguments": args}]
        for io in ("write -P 1 0 128k", "write -P 0 0 64k", "write -P 0 512k 64k",
                   "write -c -P 0 768k 64k", "write -z 896k 64k"):
            cmds.append({"execute": "human-monitor-command",
                         "arguments": {"command-line": f'qemu-io {mode} "{io}"'}})
        cmds.append({"execute": "blockdev-del", "arguments": {"node-name": mode}})
        for cmd in cmds:
            client.send(json.dumps(cmd).encode() + b"\n")
            replies.append(client.line())
    client.close()
    return replies


def _maps(qemu_img: str, d: Path) -> list[str]:
    out = []
    for mode in MODES:
        text = subprocess.run([qemu_img, "map", "--output=json", str(d / f"{mode}.qcow2")],
                              capture_output=True, text=True, check=True).stdout
        # Host offsets depend on cluster reuse timing, not on detect-zeroes.
        out.append(re.sub(r'"offset": \d+', '"offset": N', text))
    return out


@pytest.mark.qemu
def test_detect_zeroes_matches_qemu(tmp_path: Path, qemu_img: str) -> None:
    qemu = require_tool("qemu-system-x86_64")
    results = []
    for kind in ("qemu", "blockd"):
        d = tmp_path / kind
        d.mkdir()
        for mode in MODES:
            subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(d / f"{mode}.qcow2"),
                            "1M"], check=True)
        if kind == "qemu":
            sock = str(d / "q.sock")
            proc = subprocess.Popen(
                [qemu, "-machine", "none", "-nodefaults", "-display", "none",
                 "-qmp", f"unix:{sock},server=on,wait=off"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            try:
                replies = _session(sock, d)
            finally:
                proc.terminate()
                proc.wait()
        else:
            daemon = start_blockd(d)
            try:
                replies = _session(daemon.socket, d)
            finally:
                daemon.stop()
        results.append((replies, _maps(qemu_img, d)))
    assert results[1][0] == results[0][0]
    assert results[1][1] == results[0][1]
