"""``human-monitor-command`` against real QEMU's HMP (qemu-system-x86_64; QSD
has no HMP).  Covers the parts that need no block node: the command parser,
the qemu-io argument rules and lookup errors, ``info version``'s shape."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.procs import RawClient, start_blockd

HMP_LINES = [
    "foo",
    "",
    "  ",
    "foo bar baz",
    "info foo",
    "qemu-io",
    "qemu-io f0",
    'qemu-io nope "read 0 512"',
    "qemu-io nope read 0 512",
    'qemu-io -d nope "read 0 512"',
    'qemu-io -x nope "read 0 512"',
    'qemu-io nope "read 0 512" extra',
    'qemu-io "no pe" "read 0 512"',
    'qemu-io nope "unterminated',
]


def hmp_replies(sock: str, lines: list[str], cpu_index: bool = True) -> list[bytes]:
    client = RawClient(sock, negotiate=True)
    out = []
    for i, line in enumerate(lines):
        args = {"command-line": line}
        client.send(json.dumps({"execute": "human-monitor-command", "arguments": args,
                                "id": i}).encode() + b"\n")
        out.append(client.line())
    if cpu_index:
        client.send(b'{"execute":"human-monitor-command","arguments":'
                    b'{"command-line":"foo","cpu-index":3}}\n')
        out.append(client.line())
    client.close()
    return out


@pytest.mark.qemu
def test_hmp_matches_qemu_system(tmp_path: Path) -> None:
    qemu = require_tool("qemu-system-x86_64")
    sock = str(tmp_path / "q.sock")
    proc = subprocess.Popen(
        [qemu, "-machine", "none", "-nodefaults", "-display", "none",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        theirs = hmp_replies(sock, HMP_LINES)
    finally:
        proc.terminate()
        proc.wait()
    (tmp_path / "b").mkdir()
    blockd = start_blockd(tmp_path / "b")
    try:
        mine = hmp_replies(blockd.socket, HMP_LINES)
    finally:
        blockd.stop()
    for line, a, b in zip([*HMP_LINES, "cpu-index"], mine, theirs, strict=True):
        assert a == b, f"{line!r}: blockd {a!r} != qemu {b!r}"


def test_info_version(tmp_path: Path) -> None:
    blockd = start_blockd(tmp_path)
    try:
        client = RawClient(blockd.socket, negotiate=True)
        client.send(b'{"execute":"human-monitor-command","arguments":'
                    b'{"command-line":"info version"}}\n')
        assert client.line() == b'{"return": "7.2.0blockd 0.1.0\\r\\n"}\r\n'
        client.send(b'{"execute":"human-monitor-command","arguments":{"command-line":"info"}}\n')
        assert b"info version  -- show the version of QEMU" in client.line()
        client.close()
    finally:
        blockd.stop()
