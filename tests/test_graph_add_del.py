"""blockdev-add / blockdev-del against real qemu-storage-daemon: same requests,
same replies (node names, errors, locks, references, rollback of failed adds)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.procs import DaemonProcess, RawClient, start_blockd, start_qsd


def _cases(d: Path) -> list[Any]:
    a, b, r = d / "a.qcow2", d / "b.qcow2", d / "r.raw"

    def add(**kw: Any) -> dict[str, Any]:
        return {"execute": "blockdev-add", "arguments": kw}

    def rm(name: str) -> dict[str, Any]:
        return {"execute": "blockdev-del", "arguments": {"node-name": name}}

    def f(path: Path, **kw: Any) -> dict[str, Any]:
        return {"driver": "file", "filename": str(path), **kw}

    return [
        add(driver="qcow2", file=f(a)),
        add(driver="qcow2", **{"node-name": "#bad"}, file=f(a)),
        add(driver="qcow2", **{"node-name": "a" * 36}, file=f(a)),
        add(driver="qcow2", **{"node-name": "a"}, file="nope"),
        add(driver="qcow2", **{"node-name": "a"}, file=f(Path("/x"))),
        add(driver="qcow2", **{"node-name": "a"}, file=f(r)),
        add(driver="qcow2", **{"node-name": "a", "detect-zeroes": "unmap"}, file=f(a)),
        add(driver="qcow2", **{"node-name": "a", "force-share": True}, file=f(a)),
        add(driver="qcow2", **{"node-name": "b"}, file=f(b, **{"node-name": "bf"})),
        add(driver="qcow2", **{"node-name": "b"}, file=f(b)),
        add(driver="qcow2", **{"node-name": "a2"}, file=f(a, **{"node-name": "a2f"})),
        rm("a2f"), rm("bf"), rm("nope"),
        add(driver="raw", **{"node-name": "r2"}, file=f(r)),
        add(driver="file", **{"node-name": "rf"}, filename=str(r)),
        add(driver="raw", **{"node-name": "r3"}, file="rf"),
        add(driver="qcow2", **{"node-name": "q3"}, file="rf"),
        rm("rf"),
        add(driver="null-co", **{"node-name": "n1"}),
        add(driver="qcow2", **{"node-name": "c", "read-only": True}, file=f(b)),
        add(driver="qcow2", **{"node-name": "c2", "read-only": True, "force-share": True},
            file=f(b)),
        add(driver="raw", **{"node-name": "h0"}, file=f(r, **{"node-name": "h0f"})),
        add(driver="raw", **{"node-name": "h2"}, file="h0f"),
        add(driver="qcow2", **{"node-name": "s", "backing": "s"}, file=f(a, **{"node-name": "sf"})),
        rm("h0"), rm("r3"), rm("rf"), rm("c2"), rm("b"), rm("b"), rm("n1"),
        add(driver="qcow2", **{"node-name": "s", "backing": "s"}, file=f(a, **{"node-name": "sf"})),
        add(driver="qcow2", **{"node-name": "s", "backing": "sf"},
            file=f(a, **{"node-name": "sf"})),
        rm("s"),
        # Name rules: length limit, characters, a child taking the parent's name.
        add(driver="null-co", **{"node-name": "a" * 31}),
        add(driver="null-co", **{"node-name": "b" * 32}),
        add(driver="null-co", **{"node-name": "x.y_z-1"}),
        add(driver="null-co", **{"node-name": "1abc"}),
        add(driver="null-co", **{"node-name": ""}),
        add(driver="qcow2", **{"node-name": "same"}, file=f(a, **{"node-name": "same"})),
        add(driver="qcow2", **{"node-name": "p"}, file=f(a, **{"node-name": "#x"})),
        rm("a" * 31), rm("x.y_z-1"),
    ]


def _run(start: Any, d: Path) -> list[bytes]:
    proc: DaemonProcess = start(d)
    try:
        c = RawClient(proc.socket, negotiate=True)
        out = []
        for cmd in _cases(d):
            c.send(json.dumps(cmd).encode() + b"\n")
            out.append(c.line())
        c.close()
    finally:
        proc.stop()
    return out


def _images(d: Path, qemu_img: str) -> None:
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(d / "a.qcow2"), "1M"], check=True)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2",
                    str(d / "b.qcow2")], check=True, cwd=d)
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(d / "r.raw"), "1M"], check=True)


@pytest.mark.qemu
def test_add_del_same_replies_as_qsd(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    q, b = tmp_path / "q", tmp_path / "b"
    q.mkdir()
    b.mkdir()
    _images(q, qemu_img)
    _images(b, qemu_img)
    want = _run(start_qsd, q)
    got = _run(start_blockd, b)
    # Paths differ between the two directories; nothing else may.
    got_n = [g.replace(str(b).encode(), str(q).encode()) for g in got]
    for cmd, w, g in zip(_cases(q), want, got_n, strict=True):
        assert g == w, cmd
    # Everything closed: the images are consistent and unlocked.
    for img in ("a.qcow2", "b.qcow2"):
        subprocess.run([qemu_img, "check", "-q", str(b / img)], check=True)


@pytest.mark.qemu
@pytest.mark.parametrize("how", ["SIGTERM", "quit"])
def test_shutdown_flushes_and_unlocks(tmp_path: Path, qemu_img: str, qemu_io: str,
                                      how: str) -> None:
    """Writes through HMP qemu-io on a live node reach the image; after the
    daemon exits the image is consistent and unlocked."""
    import signal

    from tests.graph_helpers import VM

    _images(tmp_path, qemu_img)
    vm = VM(tmp_path)
    b = str(tmp_path / "b.qcow2")
    r = vm.qmp("blockdev-add", driver="qcow2", **{"node-name": "b"},
               file={"driver": "file", "filename": b})
    assert r == {"return": {}}
    r = vm.hmp_qemu_io("b", "write -P 0x5a 64k 128k")
    assert r == {"return": ""}
    locked = subprocess.run([qemu_io, "-f", "qcow2", "-c", "read 0 512", b],
                            capture_output=True, text=True)
    assert 'Failed to get "write" lock' in locked.stderr
    if how == "quit":
        assert vm.qmp("quit") == {"return": {}}
        vm.proc.proc.wait(20)
    else:
        vm.proc.stop(signal.SIGTERM)
    vm.shutdown()
    assert "wrote 131072/131072 bytes at offset 65536" in vm.get_log()
    subprocess.run([qemu_img, "check", "-q", b], check=True)
    out = subprocess.run([qemu_io, "-f", "qcow2", "-c", "read -P 0x5a 64k 128k", b],
                         capture_output=True, text=True, check=True).stdout
    assert "Pattern verification failed" not in out


@pytest.mark.qemu
def test_header_backing_names_like_qsd(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    """Backing files named by the image header: json: descriptions, protocol
    URLs, relative paths, a missing file."""
    import re

    from tests.graph_helpers import VM

    def run(d: Path, use_qsd: bool) -> list[str]:
        d.mkdir()
        base = d / "base.raw"
        subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(base), "1M"], check=True)
        j = json.dumps({"driver": "raw", "file": {"driver": "file", "filename": str(base)}})
        for name, backing, fmt in (("j.qcow2", f"json:{j}", "raw"),
                                   ("n.qcow2", "null-co://", "raw"),
                                   ("rel.qcow2", "base.raw", "raw"),
                                   ("miss.qcow2", "missing.qcow2", "qcow2")):
            subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-u", "-b", backing,
                            "-F", fmt, name, "1M"], check=True, cwd=d)
        vm = VM(d, qsd=use_qsd)
        out = []
        try:
            for name, ro in (("j", True), ("n", False), ("rel", True), ("miss", False)):
                r = vm.qmp("blockdev-add", driver="qcow2", **{"node-name": name, "read-only": ro},
                           file={"driver": "file", "filename": str(d / f"{name}.qcow2")})
                out.append(str(r))
            out.append(str(vm.qmp("query-named-block-nodes", flat=True)))
        finally:
            vm.shutdown()
        return [re.sub(r"#block\d+", "#B", o.replace(str(d), "DIR")) for o in out]

    assert run(tmp_path / "b", False) == run(tmp_path / "q", True)


@pytest.mark.qemu
def test_del_implicit_nodes_like_qsd(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    """Deleting generated nodes: a busy backing file is reported before the
    monitor-ownership check; a generated file node is not owned."""
    import re

    from tests.graph_helpers import VM

    def run(d: Path, use_qsd: bool) -> list[str]:
        d.mkdir()
        _images(d, qemu_img)
        vm = VM(d, qsd=use_qsd)
        out = []
        try:
            vm.qmp("blockdev-add", driver="qcow2", **{"node-name": "b"},
                   file={"driver": "file", "filename": str(d / "b.qcow2")})
            nodes = vm.qmp("query-named-block-nodes", flat=True)["return"]
            names = {n["file"] + ":" + n["drv"]: n["node-name"] for n in nodes}
            for key in sorted(names):
                r = vm.qmp("blockdev-del", **{"node-name": names[key]})
                out.append(f"{key} {r}")
            out.append(str(vm.qmp("blockdev-del", **{"node-name": "b"})))
            out.append(str(vm.qmp("query-named-block-nodes", flat=True)))
        finally:
            vm.shutdown()
        return [re.sub(r"#block\d+", "#B", o.replace(str(d), "DIR")) for o in out]

    assert run(tmp_path / "b", False) == run(tmp_path / "q", True)


@pytest.mark.qemu
def test_naming_order_like_qsd(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    """Nodes get their names in QEMU's order: a "file" child before its parent,
    children the driver opens (quorum's, blkverify's, blkdebug's) after it, the
    backing last; query-named-block-nodes and x-debug-query-block-graph show it."""
    import re

    from tests.graph_helpers import VM

    def run(d: Path, use_qsd: bool) -> list[str]:
        d.mkdir()
        _images(d, qemu_img)
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(d / "c.qcow2"), "1M"],
                       check=True)

        def q(name: str, **kw: Any) -> dict[str, Any]:
            return {"driver": "qcow2", **kw,
                    "file": {"driver": "file", "filename": str(d / name)}}

        vm = VM(d, qsd=use_qsd)
        out = []
        try:
            for args in (
                {"driver": "quorum", "node-name": "quo", "vote-threshold": 1,
                 "children": [q("a.qcow2", **{"node-name": "qa", "read-only": True}),
                              q("c.qcow2")]},
                {"driver": "blkverify", "node-name": "bv",
                 "raw": {"driver": "file", "filename": str(d / "r.raw")},
                 "test": q("b.qcow2", **{"read-only": True})},
                {"driver": "blkdebug", "node-name": "bd", "image": {"driver": "null-co"}},
                {"driver": "raw", "node-name": "top", "file": {"driver": "null-co"}},
            ):
                out.append(str(vm.qmp("blockdev-add", **args)))
            out.append(str(vm.qmp("query-named-block-nodes", flat=True)))
            out.append(str(vm.qmp("x-debug-query-block-graph")))
        finally:
            vm.shutdown()
        return [re.sub(r"#block\d+", "#B", o.replace(str(d), "DIR")) for o in out]

    assert run(tmp_path / "b", False) == run(tmp_path / "q", True)
