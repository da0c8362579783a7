"""query-blockstats: the accounting counters, and the replies against
qemu-system-x86_64 7.2 (same graphs, devices and I/O; times masked)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from blockd.graph.accounting import AcctType, BlockAcctStats, NodeStats, empty_device_stats


def test_done_failed_invalid_merge() -> None:
    st = BlockAcctStats()
    c = st.start(4096, AcctType.READ)
    st.done(c)
    st.done(c)  # a cookie counts once
    f = st.start(512, AcctType.WRITE)
    st.failed(f)
    st.invalid(AcctType.FLUSH)
    st.merge(AcctType.UNMAP, 3)
    out = st.device_stats(1234)
    assert (out["rd_bytes"], out["rd_operations"]) == (4096, 1)
    assert (out["wr_bytes"], out["wr_operations"], out["failed_wr_operations"]) == (0, 0, 1)
    assert out["invalid_flush_operations"] == 1
    assert out["unmap_merged"] == 3
    assert out["wr_highest_offset"] == 1234
    # account_failed off: a failed request adds no time
    assert out["wr_total_time_ns"] == 0
    assert out["rd_total_time_ns"] >= 0
    assert "idle_time_ns" in out and out["idle_time_ns"] >= 0
    assert out["timed_stats"] == []


def test_idle_time_only_after_an_access() -> None:
    st = BlockAcctStats()
    assert "idle_time_ns" not in st.device_stats(0)
    st.invalid(AcctType.READ)  # account_invalid off: no access time
    assert "idle_time_ns" not in st.device_stats(0)
    st2 = BlockAcctStats(account_invalid=True, account_failed=True)
    st2.invalid(AcctType.READ)
    assert "idle_time_ns" in st2.device_stats(0)
    c = st2.start(1, AcctType.WRITE)
    st2.failed(c)
    assert st2.device_stats(0)["failed_wr_operations"] == 1


def test_node_stats() -> None:
    ns = NodeStats(counts_discards=True)
    ns.wrote(4096, 512)
    ns.wrote(0, 512)
    assert ns.wr_highest_offset == 4608
    assert ns.driver_specific("file") == {"driver": "file", "discard-nb-ok": 0,
                                          "discard-nb-failed": 0, "discard-bytes-ok": 0}
    assert NodeStats().driver_specific("qcow2") is None
    assert empty_device_stats(7)["wr_highest_offset"] == 7


_TIMES = re.compile(r'"(idle_time_ns|[a-z]+_total_time_ns)": \d+')


def _mask(reply: dict[str, Any], d: Path) -> str:
    text = json.dumps(reply)
    text = _TIMES.sub(lambda m: f'"{m.group(1)}": "T"', text)
    return re.sub(r"#block\d+", "#B", text.replace(str(d), "DIR"))


def _scenario(vm: Any, d: Path) -> list[str]:
    """A chain top(qcow2) -> mid(qcow2) -> base(raw) on a scsi-hd, I/O through
    the top node (HMP qemu-io on its name: an anonymous BlockBackend, so the
    device's counters stay zero), a discard the qcow2 passes to its file, and
    an intermediate commit's implicit filter."""
    out: list[str] = []

    def q(cmd: str, **args: Any) -> None:
        out.append(_mask(vm.qmp(cmd, **args), d))

    def fmt(name: str, path: str, fmt: str, backing: Any = None) -> dict[str, Any]:
        node = {"node-name": name, "driver": fmt, "discard": "unmap",
                "file": {"driver": "file", "filename": str(d / path), "discard": "unmap"}}
        if backing is not None:
            node["backing"] = backing
        return node

    q("blockdev-add", **fmt("top", "top.qcow2", "qcow2",
                            fmt("mid", "mid.qcow2", "qcow2", fmt("base", "base.raw", "raw"))))
    q("query-blockstats")
    q("device_add", driver="virtio-scsi", id="vs")
    q("device_add", driver="scsi-hd", id="scsi0", drive="top")
    q("query-blockstats")
    q("query-blockstats", **{"query-nodes": True})
    for node, cmd in (("top", "write -P 0x11 0 64k"), ("top", "write -z 1M 64k"),
                      ("top", "write -P 0x22 3M 4k"), ("top", "discard 0 64k"),
                      ("top", "read 0 4k")):
        q("human-monitor-command", **{"command-line": f'qemu-io {node} "{cmd}"'})
    q("query-blockstats", **{"query-nodes": True})
    q("query-blockstats", **{"query-nodes": False})
    # I/O through the device's own BlockBackend: qemu-io's aio_* commands
    # account there (reads, writes, flushes, invalid requests, a failure).
    # QEMU completes aio requests after the HMP command returns: the last
    # aio_flush drains them before the query.
    for cmd in ("aio_write -P 0x44 8k 4k", "aio_read 0 8k 4k", "aio_flush",
                "aio_write -i 0 512", "aio_read -i 0 512", "aio_write -z 64k 4k",
                "aio_read 0 -1", "aio_read 5G 512", "aio_flush"):
        q("human-monitor-command", **{"command-line": f'qemu-io -d scsi0 "{cmd}"'})
    q("query-blockstats")
    q("block-commit", device="top", **{"job-id": "j", "top-node": "mid",
                                        "base-node": "base", "speed": 1})
    # The throttled job may or may not have written its first chunk yet:
    # compare the shape (names, parents, backings) only.
    out.append(json.dumps([_shape(e) for e in vm.qmp("query-blockstats")["return"]]))
    q("block-job-cancel", device="j")
    return out


def _shape(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry without its counters: which node is where (auto names masked)."""
    name = str(entry.get("node-name", ""))
    out: dict[str, Any] = {"node-name": "#B" if name.startswith("#") else name}
    for key in ("device", "qdev"):
        if key in entry:
            out[key] = entry[key]
    for key in ("parent", "backing"):
        if key in entry:
            out[key] = _shape(entry[key])
    return out


@pytest.mark.qemu
def test_blockstats_like_qemu(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    from tests.graph_helpers import VM
    from tests.test_devices import QemuVM

    def run(d: Path, real: bool) -> list[str]:
        d.mkdir()
        subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(d / "base.raw"), "4M"],
                       check=True)
        for name, back, bfmt in (("mid.qcow2", "base.raw", "raw"),
                                 ("top.qcow2", "mid.qcow2", "qcow2")):
            subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", back, "-F", bfmt,
                            str(d / name)], check=True)
        # Data in mid: the commit below has something to copy.
        subprocess.run([qemu_io, "-f", "qcow2", "-c", "write -P 0x33 0 1M",
                        str(d / "mid.qcow2")], check=True, stdout=subprocess.DEVNULL)
        vm: Any = QemuVM(d) if real else VM(d)
        try:
            return _scenario(vm, d)
        finally:
            vm.shutdown()

    got = run(tmp_path / "b", False)
    want = run(tmp_path / "q", True)
    assert got == want
