"""device_add / device_del and the iothread (AioContext) rules, blockd vs real QEMU.

Each scenario is a list of QMP commands run on ``qemu-system-x86_64 -S`` (the
oracle: QSD has no devices) and on blockd, each with its own fresh images;
replies must be equal (errors byte for byte), DEVICE_DELETED events equal,
and query-block's per-device fields equal.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.graph_helpers import VM
from tests.procs import RawClient

pytestmark = pytest.mark.qemu


class QemuVM:
    """qemu-system-x86_64 with the guest stopped and a QMP socket (as iotests run it)."""

    def __init__(self, workdir: Path) -> None:
        prog = require_tool("qemu-system-x86_64")
        sock = str(workdir / "qemu.sock")
        self.proc = subprocess.Popen(
            [prog, "-display", "none", "-nodefaults", "-S", "-machine", "pc",
             "-qmp", f"unix:{sock},server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client = RawClient(sock, negotiate=True)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    raise
                time.sleep(0.05)
        self.events: list[dict[str, Any]] = []

    def qmp(self, cmd: str, **args: Any) -> dict[str, Any]:
        req: dict[str, Any] = {"execute": cmd}
        if args:
            req["arguments"] = args
        self.client.send(json.dumps(req).encode() + b"\n")
        while True:
            reply: dict[str, Any] = json.loads(self.client.line())
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    def shutdown(self) -> None:
        self.qmp("quit")
        self.client.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


Peer = QemuVM | VM


def wait_event(vm: Peer, name: str) -> dict[str, Any]:
    """The next ``name`` event (QEMU sends DEVICE_DELETED some time after the reply)."""
    deadline = time.monotonic() + 10
    while True:
        for ev in vm.events:
            if ev["event"] == name:
                vm.events.remove(ev)
                return {"event": name, "data": ev.get("data")}
        if time.monotonic() > deadline:
            raise TimeoutError(name)
        line = vm.client.line(timeout=10)
        vm.events.append(json.loads(line))


def _images(workdir: Path, qemu_img: str) -> None:
    for name in ("hd0", "hd1", "hd2"):
        subprocess.run([qemu_img, "create", "-f", "qcow2", str(workdir / f"{name}.img"),
                        "1M"], check=True, capture_output=True)


def _hd(workdir: Path, n: int) -> dict[str, Any]:
    return {"driver": "qcow2", "node-name": f"hd{n}",
            "file": {"driver": "file", "node-name": f"hd{n}-file",
                     "filename": str(workdir / f"hd{n}.img")}}


def _block_summary(vm: Peer) -> list[dict[str, Any]]:
    out = []
    for info in vm.qmp("query-block")["return"]:
        ins = info.get("inserted", {})
        out.append({k: info.get(k) for k in ("device", "qdev", "type", "removable",
                                               "locked", "io-status")}
                   | {"node": ins.get("node-name"), "ro": ins.get("ro"),
                      "keys": list(info)})
    return out


def run_scenario(tmp_path: Path, qemu_img: str, steps: list[Any]) -> list[list[Any]]:
    """Run ``steps`` on QEMU and on blockd; returns both transcripts."""
    transcripts: list[list[Any]] = []
    for kind in ("qemu", "blockd"):
        workdir = tmp_path / kind
        workdir.mkdir()
        _images(workdir, qemu_img)
        vm: Peer = QemuVM(workdir) if kind == "qemu" else VM(workdir)
        out: list[Any] = []
        try:
            for step in steps:
                if step == "query-block":
                    out.append(_block_summary(vm))
                    continue
                if isinstance(step, tuple) and step[0] == "event":
                    out.append(wait_event(vm, step[1]))
                    continue
                cmd, given = step
                if isinstance(given, int):
                    args = _hd(workdir, given)
                elif isinstance(given, tuple):  # (index, extra options)
                    args = _hd(workdir, given[0]) | given[1]
                else:
                    args = given
                # Paths differ between the two runs: compare them relative.
                reply = json.loads(json.dumps(vm.qmp(cmd, **args)).replace(
                    str(workdir), "DIR"))
                out.append([cmd, given, reply])
        finally:
            vm.shutdown()
        transcripts.append(out)
    return transcripts


def assert_same(tmp_path: Path, qemu_img: str, steps: list[Any]) -> list[Any]:
    qemu, blockd = run_scenario(tmp_path, qemu_img, steps)
    for q, b in zip(qemu, blockd, strict=True):
        assert b == q
    return qemu


def test_device_add_errors(tmp_path: Path, qemu_img: str) -> None:
    """QEMU's texts (and classes) for the ways device_add can fail."""
    steps: list[Any] = [
        ("device_add", {"driver": "virtio-scsi", "id": "scsi0", "iothread": "iothread0"}),
        ("device_add", {"driver": "nosuch"}),
        ("device_add", {"driver": "virtio-scsi", "id": "1bad"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0"}),
        ("object-add", {"qom-type": "iothread", "id": "iothread0"}),
        ("object-add", {"qom-type": "throttle-group", "id": "tg"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsiX", "iothread": "tg"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsiX", "iothread": 1}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsiX", "foo": 1}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi0", "iothread": "iothread0"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi0"}),
        ("device_add", {"driver": "virtio-scsi-pci", "id": "scsi1", "iothread": ""}),
        ("device_add", {"driver": "scsi-hd", "bus": "scsi0.0"}),
        ("device_add", {"driver": "scsi-hd", "bus": "scsi9.0", "drive": "hd0"}),
        ("device_add", {"driver": "scsi-hd", "bus": "scsi0.0", "drive": "hd0"}),
        ("blockdev-add", 0),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "scsi-id": "abc"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "scsi-id": 300}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "scsi-id": -5}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "lun": 20000}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": "maybe"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "iothread": "x"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "bus": "scsi0.0", "id": "d0"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "bus": "scsi1.0", "id": "d1"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "bus": "scsi1.0",
                        "share-rw": True, "id": "d1"}),
        ("device_add", {"driver": "scsi-hd", "drive": "d0", "share-rw": True}),
        ("blockdev-del", {"node-name": "hd0"}),
        ("qom-list", {"path": "/machine/peripheral-anon"}),
        "query-block",
    ]
    assert_same(tmp_path, qemu_img, steps)


def test_scsi_addresses_and_device_del(tmp_path: Path, qemu_img: str) -> None:
    """Target/LUN assignment, anonymous device numbering, device_del and its
    DEVICE_DELETED event, query-block before and after."""
    steps: list[Any] = [
        ("blockdev-add", 0),
        ("device_add", {"driver": "virtio-scsi"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": True,
                        "scsi-id": 3}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": "on",
                        "scsi-id": 3}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": "yes",
                        "scsi-id": 3, "lun": 0, "id": "x"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": True, "id": "d1"}),
        ("qom-list", {"path": "/machine/peripheral-anon"}),
        "query-block",
        ("device_del", {"id": "nosuch"}),
        ("device_del", {"id": "d1"}),
        ("event", "DEVICE_DELETED"),
        ("device_del", {"id": "/machine/peripheral-anon/device[1]"}),
        ("event", "DEVICE_DELETED"),
        ("qom-list", {"path": "/machine/peripheral-anon"}),
        "query-block",
        ("device_del", {"id": "/machine/peripheral-anon/device[0]"}),
        ("device_del", {"id": "/machine/peripheral-anon/device[0]"}),
    ]
    assert_same(tmp_path, qemu_img, steps)


def _iothread_steps(a: str | None, b: str | None) -> list[Any]:
    """iotest 245's run_test_iothreads(), with a device_del at the end."""
    steps: list[Any] = [
        ("blockdev-add", 0),
        ("blockdev-add", 2),
        ("object-add", {"qom-type": "iothread", "id": "iothread0"}),
        ("object-add", {"qom-type": "iothread", "id": "iothread1"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi0", "iothread": a or ""}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi1", "iothread": b or ""}),
    ]
    if a:
        steps.append(("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": True,
                                     "bus": "scsi0.0", "id": "d0"}))
    if b:
        steps.append(("device_add", {"driver": "scsi-hd", "drive": "hd2", "share-rw": True,
                                     "bus": "scsi1.0", "id": "d2"}))
    steps += [
        ("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "hd0",
                                          "file": "hd0-file", "backing": "hd2"}]}),
        ("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "hd0",
                                          "file": "hd0-file", "backing": None}]}),
        # A disk on the other controller: its iothread must take hd0's graph.
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": True,
                        "bus": "scsi1.0", "id": "e0"}),
        "query-block",
    ]
    return steps


@pytest.mark.parametrize("a,b", [("iothread0", "iothread1"), ("iothread0", "iothread0"),
                                 ("iothread0", None), (None, "iothread0")])
def test_iothread_rules(tmp_path: Path, qemu_img: str, a: str | None, b: str | None) -> None:
    """245's four cases: incompatible users refuse the new backing with
    ``Cannot change iothread of active block backend``; the others move."""
    qemu = assert_same(tmp_path, qemu_img, _iothread_steps(a, b))
    reopen = next(s for s in qemu if isinstance(s, list) and s[0] == "blockdev-reopen")
    if (a, b) == ("iothread0", "iothread1"):
        assert reopen[2]["error"]["desc"] == "Cannot change iothread of active block backend"
    else:
        assert reopen[2] == {"return": {}}


def test_unplug_returns_graph_to_main_context(tmp_path: Path, qemu_img: str) -> None:
    """After the disk on an iothread controller is unplugged, its node can be
    attached to a main-context device again (the graph went back)."""
    steps: list[Any] = [
        ("blockdev-add", 0),
        ("blockdev-add", 2),
        ("object-add", {"qom-type": "iothread", "id": "iothread0"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi0", "iothread": "iothread0"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi1"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "bus": "scsi0.0", "id": "d0",
                        "share-rw": True}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd2", "bus": "scsi1.0", "id": "d2",
                        "share-rw": True}),
        ("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "hd0",
                                          "file": "hd0-file", "backing": "hd2"}]}),
        ("device_del", {"id": "d0"}),
        ("event", "DEVICE_DELETED"),
        ("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "hd0",
                                          "file": "hd0-file", "backing": "hd2"}]}),
        "query-block",
    ]
    assert_same(tmp_path, qemu_img, steps)



def test_new_parent_follows_child_context(tmp_path: Path, qemu_img: str) -> None:
    """blockdev-add of a node over a node a device keeps in an iothread: the new
    node joins the iothread (bdrv_attach_child_common), so a disk on a
    main-context controller cannot take it; the graph as x-debug shows it."""
    steps: list[Any] = [
        ("blockdev-add", 0),
        ("object-add", {"qom-type": "iothread", "id": "iothread0"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi0", "iothread": "iothread0"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi1"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "bus": "scsi0.0", "id": "d0",
                        "share-rw": True}),
        ("blockdev-add", {"driver": "raw", "node-name": "r", "file": "hd0"}),
        ("device_add", {"driver": "scsi-hd", "drive": "r", "bus": "scsi1.0", "id": "e0",
                        "share-rw": True}),
        ("device_add", {"driver": "scsi-hd", "drive": "r", "bus": "scsi0.0", "id": "e1",
                        "share-rw": True}),
        ("x-debug-query-block-graph", {}),
        "query-block",
    ]
    assert_same(tmp_path, qemu_img, steps)


def test_buses_and_qemu_io_on_devices(tmp_path: Path, qemu_img: str) -> None:
    """Explicit buses of the wrong kind, device paths that are not devices, and
    HMP ``qemu-io -d`` on a disk, on a controller and on a missing device."""
    steps: list[Any] = [
        ("blockdev-add", 0),
        ("human-monitor-command", {"command-line": 'qemu-io -d nodev "read 0 512"'}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi0", "bus": "pci.0"}),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi1", "bus": "scsi0.0"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d0", "bus": "pci.0"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d0",
                        "bus": "/machine/peripheral/scsi0/virtio-backend/scsi0.0"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d0"}),
        ("human-monitor-command", {"command-line": 'qemu-io -d d0 "write -P 7 0 512"'}),
        ("human-monitor-command", {"command-line": 'qemu-io -d scsi0 "read 0 512"'}),
        ("human-monitor-command", {"command-line": 'qemu-io -d nodev "read 0 512"'}),
        ("device_del", {"id": "/machine/peripheral"}),
        ("device_del", {"id": "/machine/peripheral/d0"}),
        ("event", "DEVICE_DELETED"),
        "query-block",
    ]
    assert_same(tmp_path, qemu_img, steps)


def test_anonymous_controller_buses(tmp_path: Path, qemu_img: str) -> None:
    """Controllers without an id get buses ``scsi.N`` counted among themselves;
    a disk without ``bus`` goes to the newest controller (LUN clash shows it)."""
    steps: list[Any] = [
        ("blockdev-add", 0),
        ("device_add", {"driver": "virtio-scsi"}),
        ("device_add", {"driver": "virtio-scsi", "id": "s1"}),
        ("device_add", {"driver": "virtio-scsi"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": True, "id": "a",
                        "scsi-id": 1, "lun": 0}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": True, "id": "b",
                        "bus": "scsi.1", "scsi-id": 1, "lun": 0}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": True, "id": "c",
                        "bus": "scsi.0", "scsi-id": 1, "lun": 0}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "share-rw": True, "id": "d",
                        "bus": "scsi.2"}),
        ("qom-list", {"path": "/machine/peripheral-anon"}),
    ]
    assert_same(tmp_path, qemu_img, steps)


def test_read_only_node_and_disk_options(tmp_path: Path, qemu_img: str) -> None:
    """Disks on a read-only node take no write permission (several may share
    it without share-rw); write-cache=off shows in query-block; option errors."""
    steps: list[Any] = [
        ("blockdev-add", (0, {"read-only": True})),
        ("device_add", {"driver": "virtio-scsi", "id": "scsi0"}),
        ("device_add", {"driver": "scsi-hd", "drive": "", "id": "d9"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d0"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d1", "write-cache": "off"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d2",
                        "write-cache": "bogus"}),
        ("device_add", {"driver": "scsi-hd", "drive": "hd0", "id": "d3", "werror": "stop",
                        "rerror": "nope"}),
        ("query-block", {}),
        ("x-debug-query-block-graph", {}),
    ]
    assert_same(tmp_path, qemu_img, steps)
