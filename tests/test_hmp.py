"""``human-monitor-command`` against real QEMU's HMP (qemu-system-x86_64; QSD
has no HMP).  Covers the parts that need no block node: the command parser,
the qemu-io argument rules and lookup errors, ``info version``'s shape."""

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


def _qemu_io_session(sock: str, img: str) -> list[bytes]:
    client = RawClient(sock, negotiate=True)
    out = []
    for cmd in [
        {"execute": "blockdev-add",
         "arguments": {"driver": "file", "filename": img, "node-name": "af"}},
        {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "file": "af",
                                                  "node-name": "a"}},
        {"execute": "blockdev-add",
         "arguments": {"driver": "qcow2", "node-name": "ro", "read-only": True,
                       "file": {"driver": "file", "filename": img, "read-only": True}}},
    ] + [
        {"execute": "human-monitor-command", "arguments": {"command-line": line}}
        for line in (
            'qemu-io af "write 0 512"',  # the qcow2 node above does not share write
            'qemu-io a "write -P 0x11 0 512"',
            'qemu-io a "read -P 0x11 0 512"',
            'qemu-io a "read -P 0x22 0 512"',
            'qemu-io ro "write 0 512"',
            'qemu-io a "bogus"',
            'qemu-io a "length"',
        )
    ]:
        client.send(json.dumps(cmd).encode() + b"\n")
        out.append(client.line())
    client.close()
    return out


def _masked_stdout(path: Path) -> list[str]:
    # Only the timing line's figures differ between runs.
    return [re.sub(r"\d+\.\d+ sec.*", "T", line) for line in path.read_text().splitlines()
            if line.strip()]


@pytest.mark.qemu
def test_hmp_qemu_io_on_live_nodes_matches_qemu_system(tmp_path: Path, qemu_img: str) -> None:
    """qemu-io through HMP on real nodes: permissions of the unnamed BlockBackend,
    read-only refusal, results on the daemon's stdout, errors in the reply."""
    qemu = require_tool("qemu-system-x86_64")
    results = []
    for kind in ("qemu", "blockd"):
        work = tmp_path / kind
        work.mkdir()
        img = str(work / "a.qcow2")
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", img, "1M"], check=True)
        stdout = work / "stdout"
        with open(stdout, "w") as out:
            if kind == "qemu":
                sock = str(work / "q.sock")
                proc = subprocess.Popen(
                    [qemu, "-machine", "none", "-nodefaults", "-display", "none",
                     "-qmp", f"unix:{sock},server=on,wait=off"],
                    stdout=out, stderr=subprocess.DEVNULL,
                )
                deadline = time.monotonic() + 30
                while not os.path.exists(sock):
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.02)
                try:
                    replies = _qemu_io_session(sock, img)
                finally:
                    proc.terminate()
                    proc.wait()
            else:
                daemon = start_blockd(work, stdout=out)
                try:
                    replies = _qemu_io_session(daemon.socket, img)
                finally:
                    daemon.stop()
        results.append((replies, _masked_stdout(stdout)))
    assert results[1][0] == results[0][0]
    assert results[1][1] == results[0][1]
