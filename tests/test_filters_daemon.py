"""Filter drivers and throttle groups through the daemon, against QSD 7.2.

The same QMP script runs in qemu-storage-daemon and in blockd over copies of
the same images (same-length directories); reply lines must be equal byte for
byte once the image directory and host allocation sizes are masked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.procs import DaemonProcess, RawClient, start_blockd, start_qsd

pytestmark = pytest.mark.qemu

Cmd = dict[str, Any]
Files = Callable[[str], dict[str, Any]]


def _connect(proc: DaemonProcess) -> RawClient:
    """A client; tolerates the window between the socket file appearing and the
    daemon listening on it."""
    for _ in range(100):
        try:
            return RawClient(proc.socket, negotiate=True, timeout=30)
        except ConnectionRefusedError:
            time.sleep(0.02)
    return RawClient(proc.socket, negotiate=True, timeout=30)


def _replies(proc: DaemonProcess, cmds: list[Cmd]) -> list[str]:
    client = _connect(proc)
    try:
        out = []
        for cmd in cmds:
            client.send(json.dumps(cmd).encode() + b"\n")
            line = client.line().decode()
            # Events (QUORUM_*) are compared too, in arrival order.
            while '"event"' in line:
                out.append(re.sub(r'"timestamp": \{[^}]*\}', '"timestamp": T', line))
                line = client.line().decode()
            out.append(line)
        return out
    finally:
        client.close()
        proc.stop()


def _mask(line: str, d: Path) -> str:
    line = re.sub(r'"actual-size": \d+', '"actual-size": 0', line.replace(str(d), "IMGDIR"))
    # QEMU appends two random digits to implicit node names.
    return re.sub(r"#block\d+", "#blockNNN", line)


def _compare(tmp_path: Path, qemu_img: str, script: Callable[[Files], list[Cmd]]) -> list[str]:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        subprocess.run([qemu_img, "create", "-f", "qcow2", f"hd{i}.qcow2", "1M"], check=True,
                       capture_output=True, cwd=src)
    subprocess.run([qemu_img, "create", "-f", "raw", "r.raw", "1M"], check=True,
                   capture_output=True, cwd=src)
    replies = {}
    for key in ("q", "b"):
        d = tmp_path / key
        shutil.copytree(src, d)

        def files(name: str, d: Path = d) -> dict[str, Any]:
            return {"driver": "file", "filename": str(d / name)}

        start = start_qsd if key == "q" else start_blockd
        lines = _replies(start(d), script(files))
        replies[key] = [_mask(line, d) for line in lines]
    for i, (want, got) in enumerate(zip(replies["q"], replies["b"], strict=False)):
        assert got == want, f"reply {i}"
    assert len(replies["q"]) == len(replies["b"])
    return replies["b"]


def _x(name: str, **kw: Any) -> Cmd:
    return {"execute": name, "arguments": kw}


def _add(**kw: Any) -> Cmd:
    return _x("blockdev-add", **kw)


def _hd(f: Files, i: int) -> dict[str, Any]:
    return {"driver": "qcow2", "node-name": f"hd{i}", "file": f(f"hd{i}.qcow2")}


def test_throttle_groups_and_filter(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    def script(f: Files) -> list[Cmd]:
        group0 = {"qom-type": "throttle-group", "id": "group0",
                  "limits": {"iops-total": 1000}}
        thr = {"driver": "throttle", "node-name": "throttle0", "throttle-group": "group0",
               "file": _hd(f, 0)}
        return [
            _x("object-add", **group0),
            _x("object-add", **group0),
            _x("object-add", **{"qom-type": "throttle-group", "id": "group1",
                                "limits": {"iops-total": 2000}}),
            _x("object-add", **{"qom-type": "throttle-group", "id": "bad",
                                "limits": {"iops-total": 10, "iops-read": 5}}),
            _x("object-add", **{"qom-type": "throttle-group", "id": "bad",
                                "x-iops-total": -1}),
            _x("object-add", **{"qom-type": "throttle-group", "id": "bad",
                                "x-bps-total-max-length": 5000000000}),
            _x("object-add", **{"qom-type": "throttle-group", "id": "g11",
                                "limits": {"bps-total": 100}, "x-bps-total": 5}),
            _x("qom-list", path="/objects/group0"),
            _x("qom-get", path="/objects/group0", property="limits"),
            _x("qom-get", path="/objects/g11", property="x-bps-total"),
            _add(**{**thr, "throttle-group": "nope"}),
            _add(**{k: v for k, v in thr.items() if k != "throttle-group"}),
            _add(**thr),
            _x("object-del", id="group0"),
            _x("blockdev-reopen", options=[{**thr, "file": "hd0",
                                            "throttle-group": "notfound"}]),
            _x("blockdev-reopen", options=[{**thr, "file": "hd0",
                                            "throttle-group": "group1"}]),
            _x("object-del", id="group1"),
            _x("object-del", id="group0"),
            _x("blockdev-reopen", options=[{**thr, "file": "hd0"}]),
            _x("object-del", id="group0"),
            _x("object-del", id="group1"),
            _x("query-named-block-nodes", flat=True),
            _x("blockdev-del", **{"node-name": "throttle0"}),
            _x("object-del", id="group0"),
            _x("object-del", id="g11"),
        ]

    _compare(tmp_path, qemu_img, script)


def test_245_insert_throttle_filter(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    def script(f: Files) -> list[Cmd]:
        hd0 = {"driver": "qcow2", "node-name": "hd0",
               "file": {**f("hd0.qcow2"), "node-name": "hd0-file"}}
        return [
            _add(**hd0),
            _x("object-add", **{"qom-type": "throttle-group", "id": "group0",
                                "limits": {"iops-total": 1000}}),
            _add(driver="throttle", **{"node-name": "throttle0", "throttle-group": "group0"},
                 file="hd0-file"),
            _x("blockdev-reopen", options=[{**hd0, "file": "throttle0"}]),
            _x("query-named-block-nodes", flat=True),
            _x("x-debug-query-block-graph"),
            _x("blockdev-reopen", options=[{**hd0, "file": "hd0-file"}]),
            _x("query-named-block-nodes", flat=True),
            _x("object-del", id="group0"),
            _x("blockdev-del", **{"node-name": "throttle0"}),
            _x("object-del", id="group0"),
        ]

    _compare(tmp_path, qemu_img, script)


def test_quorum_blkdebug_blkverify_compress(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    def script(f: Files) -> list[Cmd]:
        quorum = {"driver": "quorum", "node-name": "quorum0",
                  "children": ["hd0", "hd1", "hd2"], "vote-threshold": 2}
        # The image is a reference: with an inline image QSD lists the nodes in
        # another order (QEMU names blkdebug before opening "image").
        bd = {"driver": "blkdebug", "node-name": "bd", "config": "/dev/null",
              "image": "hd0"}
        return [
            *[_add(**{**_hd(f, i), "backing": None}) for i in range(3)],
            _add(**{**quorum, "vote-threshold": 0}),
            _add(**{**quorum, "vote-threshold": 4}),
            _add(**{**quorum, "read-pattern": "fifo", "rewrite-corrupted": True,
                    "node-name": "qf"}),
            _add(**{**quorum, "blkverify": True}),
            _add(**quorum),
            _x("blockdev-reopen", options=[quorum]),
            _x("query-named-block-nodes", flat=True),
            _x("blockdev-del", **{"node-name": "quorum0"}),
            _x("blockdev-del", **{"node-name": "qf"}),
            *[_x("blockdev-del", **{"node-name": f"hd{i}"}) for i in range(3)],
            _add(**{**_hd(f, 0), "backing": None}),
            _add(**{**bd, "config": "/non/existent"}),
            _add(**{**bd, "align": 3}),
            _add(**{**bd, "inject-error": [{"event": "nope"}]}),
            _add(**bd),
            _x("query-named-block-nodes", flat=True),
            _x("blockdev-reopen", options=[bd]),
            _x("blockdev-reopen", options=[{**bd, "align": 33554432}]),
            _x("blockdev-reopen", options=[{**bd, "config": "/non/existent"}]),
            _x("blockdev-del", **{"node-name": "bd"}),
            _add(driver="compress", **{"node-name": "c0"}, file=f("r.raw")),
            _add(**_hd(f, 1)),
            _add(driver="compress", **{"node-name": "c1"}, file="hd1"),
            _add(**{**f("r.raw"), "node-name": "rr"}),
            _add(driver="blkverify", **{"node-name": "bv"}, test="hd1", raw="rr"),
            _x("blockdev-reopen", options=[{"driver": "blkverify", "node-name": "bv",
                                            "test": "hd1", "raw": "rr"}]),
            _add(driver="copy-on-read", **{"node-name": "cor"}, file="c1",
                 bottom="nope"),
            _add(driver="copy-on-read", **{"node-name": "cor"}, file="c1"),
            _x("query-named-block-nodes", flat=True),
        ]

    _compare(tmp_path, qemu_img, script)


def _hmp_io(client: RawClient, device: str, command: str) -> str:
    client.send(json.dumps({"execute": "human-monitor-command", "arguments": {
        "command-line": f'qemu-io {device} "{command}"'}}).encode() + b"\n")
    return client.line().decode()


def _qemu_io_lines(stdout: Path) -> list[str]:
    # Rate lines carry timings; keep the result lines.
    return [ln for ln in stdout.read_text().splitlines()
            if ln and not re.match(r"^\d.* ops; ", ln)]


def _run_hmp_script(d: Path, start: Callable[..., DaemonProcess],
                    steps: list[tuple[str, Any]]) -> tuple[list[str], list[str]]:
    out_path = d / "stdout.txt"
    with open(out_path, "wb") as out:
        proc = start(d, stdout=out)
        client = _connect(proc)
        replies = []
        try:
            for kind, arg in steps:
                if kind == "io":
                    replies.append(_hmp_io(client, *arg))
                else:
                    client.send(json.dumps(arg).encode() + b"\n")
                    replies.append(client.line().decode())
        finally:
            client.close()
            proc.stop()
    return replies, _qemu_io_lines(out_path)


def test_245_insert_compress_and_blkdebug_io(tmp_path: Path, qemu_img: str,
                                             qemu_io: str) -> None:
    """iotest 245's test_insert_compress_filter, plus injected errors seen by qemu-io.

    QSD has no HMP, so blockd's qemu-io output is checked against qemu-io's
    formats and the image against real qemu-io, as the iotest does."""
    img = tmp_path / "hd0.qcow2"
    subprocess.run([qemu_img, "create", "-f", "qcow2", str(img), "3M"], check=True,
                   capture_output=True)
    raw_img = tmp_path / "r.raw"
    raw_img.write_bytes(bytes(1 << 20))
    hd0 = {"driver": "qcow2", "node-name": "hd0",
           "file": {"driver": "file", "node-name": "hd0-file", "filename": str(img)}}
    hd = {"driver": "raw", "node-name": "hd", "file": hd0}
    bd = {"driver": "blkdebug", "node-name": "bd",
          "inject-error": [{"event": "none", "sector": 8, "errno": 28}],
          "image": {"driver": "file", "filename": str(raw_img)}}
    steps: list[tuple[str, Any]] = [
        ("qmp", _add(**hd)),
        ("qmp", _add(driver="compress", **{"node-name": "compress0"}, file="hd0")),
        ("io", ("hd", "write -z -u 0 128k")),
        ("io", ("hd", "write -P 0xa0 0 64k")),
        ("qmp", _x("blockdev-reopen", options=[{**hd, "file": "compress0"}])),
        ("io", ("hd", "write -P 0xa1 64k 64k")),
        ("qmp", _x("blockdev-reopen", options=[{**hd, "file": "hd0"}])),
        ("io", ("hd", "write -P 0xa2 128k 64k")),
        ("io", ("hd", "read -P 0xa0 0 64k")),
        ("io", ("hd", "read -P 0xa1 64k 64k")),
        ("io", ("hd", "read -P 0xa2 128k 64k")),
        ("qmp", _add(**bd)),
        ("io", ("bd", "read 0 4k")),
        ("io", ("bd", "read 4k 4k")),
        ("io", ("bd", "write 0 4k")),
        ("io", ("bd", "write 4k 512")),
    ]
    replies, lines = _run_hmp_script(tmp_path, start_blockd, steps)
    assert replies == ['{"return": {}}\r\n' if k == "qmp" else '{"return": ""}\r\n'
                       for k, _ in steps]
    assert lines == [
        "wrote 131072/131072 bytes at offset 0",
        "wrote 65536/65536 bytes at offset 0",
        "wrote 65536/65536 bytes at offset 65536",
        "wrote 65536/65536 bytes at offset 131072",
        "read 65536/65536 bytes at offset 0",
        "read 65536/65536 bytes at offset 65536",
        "read 65536/65536 bytes at offset 131072",
        "read 4096/4096 bytes at offset 0",
        "read failed: No space left on device",
        "wrote 4096/4096 bytes at offset 0",
        "write failed: No space left on device",
    ]
    # 245's check: the second L2 entry is compressed (0x40), the others not (0x80).
    check = subprocess.run([qemu_io, "-f", "raw", "-c", "read -P 0x80 0x40000 1",
                            "-c", "read -P 0x40 0x40008 1", "-c", "read -P 0x80 0x40010 1",
                            str(img)], capture_output=True, text=True).stdout
    assert "Pattern verification failed" not in check
    assert check.count("read 1/1 bytes at offset") == 3
    ok = subprocess.run([qemu_img, "check", str(img)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout


def test_filter_reopen_keeps_options(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    """Neither compress nor copy-on-read can be reopened in QEMU 7.2."""

    def script(f: Files) -> list[Cmd]:
        hd1 = {**_hd(f, 1), "backing": None}
        cor = {"driver": "copy-on-read", "node-name": "cor", "file": "c1"}
        return [
            _add(**hd1),
            _add(driver="compress", **{"node-name": "c1"}, file="hd1"),
            _x("blockdev-reopen", options=[{"driver": "compress", "node-name": "c1",
                                            "file": "hd1"}]),
            _add(**cor),
            _x("blockdev-reopen", options=[cor]),
            _x("blockdev-reopen", options=[{**cor, "file": "hd1"}]),
            _x("query-named-block-nodes", flat=True),
            _x("blockdev-del", **{"node-name": "cor"}),
        ]

    _compare(tmp_path, qemu_img, script)


def test_copy_on_read_bottom_in_daemon(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    def script(f: Files) -> list[Cmd]:
        cor = {"driver": "copy-on-read", "node-name": "cor", "file": "hd1", "bottom": "hd1"}
        return [
            _add(**{**_hd(f, 1), "backing": None}),
            _add(**cor),
            _x("blockdev-reopen", options=[cor]),
            _x("blockdev-reopen", options=[{k: v for k, v in cor.items() if k != "bottom"}]),
            _x("query-named-block-nodes", flat=True),
        ]

    _compare(tmp_path, qemu_img, script)
