"""blockdev-reopen (and add/del around it) against real qemu-storage-daemon:
the same script on both, the same replies, and the same view from another
process (image locks) at chosen points."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.graph_helpers import VM

pytestmark = pytest.mark.qemu

Step = tuple[str, Any]


def _file(d: Path, name: str, node: str | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"driver": "file", "filename": str(d / name), **kw}
    if node:
        out["node-name"] = node
    return out


def _hd(d: Path, i: int, **kw: Any) -> dict[str, Any]:
    return {"driver": "qcow2", "node-name": f"hd{i}",
            "file": _file(d, f"hd{i}.img", f"hd{i}-file"), **kw}


def _reopen(*opts: dict[str, Any]) -> Step:
    return ("qmp", ("blockdev-reopen", {"options": list(opts)}))


def _add(**opts: Any) -> Step:
    return ("qmp", ("blockdev-add", opts))


def _del(name: str) -> Step:
    return ("qmp", ("blockdev-del", {"node-name": name}))


def _probe(*args: str) -> Step:
    """Run a QEMU tool on the image from outside (lock view)."""
    return ("probe", args)


def _script(d: Path) -> list[Step]:
    hd0 = _hd(d, 0)
    hd1 = _hd(d, 1)
    hd2 = _hd(d, 2)
    nb = {"backing": None}
    return [
        _add(**hd0),

        _reopen(hd0),
        _reopen({**hd0, "file": "hd0-file"}),
        _reopen({k: v for k, v in hd0.items() if k != "node-name"}),
        _reopen({**hd0, "node-name": "nope"}),
        _reopen({**hd0, "driver": "raw"}),
        _reopen({**hd0, "file": "nope"}),
        _reopen({**hd0, "file": {**hd0["file"], "filename": str(d / "hd1.img")}}),
        _reopen({**hd0, "file": {**hd0["file"], "locking": "off"}}),
        _reopen({**hd0, "file": {**hd0["file"], "node-name": "other"}}),
        _reopen({**hd0, "force-share": True}),
        _reopen({**hd0, "detect-zeroes": "unmap"}),
        _reopen({**hd0, "l2-cache-entry-size": 131072}),
        _reopen({**hd0, "l2-cache-size": 1048576, "cache-size": 524288}),
        _probe("qemu-io", "-f", "qcow2", "-c", "read 0 512", "hd0.img"),
        _reopen({**hd0, "read-only": True}),
        _probe("qemu-io", "-f", "qcow2", "-c", "read 0 512", "hd0.img"),
        _probe("qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", "hd0.img"),
        _reopen({**hd0, "file": "hd0-file"}),
        _reopen(hd0),
        _probe("qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", "hd0.img"),
        _del("hd0"),
        # hd1's header names hd0.img: implicit backing, then references.
        _add(**hd1),
        _probe("qemu-io", "-f", "qcow2", "-c", "read 0 512", "hd0.img"),
        _probe("qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", "hd0.img"),
        _reopen(hd1),
        _reopen({**hd1, **nb}),
        _reopen(hd1),
        _add(**{**hd2, **nb}),
        _reopen({**hd1, "backing": "hd2"}),
        _reopen({**hd2, "backing": "hd1"}),
        _reopen({**hd2, "backing": "hd2"}),
        _reopen({**hd2, "file": "hd1-file"}),
        _del("hd2"),
        _del("hd1-file"),
        # Several nodes at once; one bad entry changes nothing.
        _reopen({**hd1, **nb}, {**hd2, "backing": "hd1"}),
        _reopen({**hd1, "backing": "hd2"}, {**hd2, **nb, "detect-zeroes": "unmap"}),
        _reopen({**hd1, "backing": "hd2"}, {**hd2, "backing": "hd1"}),
        _reopen({**hd2, **nb, "read-only": True}),
        _reopen({**hd1, "backing": "hd2"}),
        _reopen({**hd1, **nb}),
        _reopen({**hd1, "read-only": True, **nb}, {**hd2, "read-only": True, **nb}),
        _probe("qemu-io", "-f", "qcow2", "-c", "read 0 512", "hd2.img"),
        _reopen({**hd1, **nb}, {**hd2, **nb}),
        # Checked in queue order against the graph as the entries before left it.
        _reopen({**hd1, "backing": "hd2"}, {**hd2, "backing": "hd1"}),
        _reopen({**hd2, "backing": "hd1"}, {**hd1, "backing": "hd2"}),
        _reopen({**hd1, **nb}, {**hd2, **nb}),
        _del("hd2"),
        _del("hd1"),
        _del("hd2"),
        _probe("qemu-img", "check", "hd1.img"),
        _add(driver="null-co", **{"node-name": "n", "size": 1024}),
        _reopen({"driver": "null-co", "node-name": "n", "size": 1024}),
        _reopen({"driver": "null-co", "node-name": "n", "size": 2048}),
        _reopen({"driver": "null-co", "node-name": "n"}),
        _add(driver="raw", **{"node-name": "r"}, file={"driver": "null-co", "size": 4096}),
        _reopen({"driver": "raw", "node-name": "r", "offset": 512,
                 "file": {"driver": "null-co", "size": 4096}}),
        _reopen({"driver": "raw", "node-name": "r", "offset": 8192,
                 "file": {"driver": "null-co", "size": 4096}}),
    ]


def _script_options(d: Path) -> list[Step]:
    """Driver options on reopen: reset rules, raw window, cache, read-only and
    force-share switches, nodes sharing one file."""
    hd0 = {"driver": "qcow2", "node-name": "hd0", "lazy-refcounts": True,
           "file": _file(d, "hd0.img", "hd0-file", aio="threads")}
    ref = {**hd0, "file": "hd0-file"}
    del ref["lazy-refcounts"]
    raw = {"driver": "raw", "node-name": "r", "file": "rf"}
    rf = {"driver": "file", "node-name": "rf", "filename": str(d / "hd2.img")}
    return [
        _add(**hd0),
        _reopen({"driver": "file", "node-name": "hd0-file"}),
        _reopen({"driver": "qcow2", "node-name": "hd0"}),
        _reopen({"driver": "qcow2", "node-name": "hd0", "file": {"driver": "file"}}),
        _reopen({"driver": "qcow2", "node-name": "hd0",
                 "file": {"driver": "file", "filename": str(d / "hd0.img")}}),
        _reopen({**ref, "lazy-refcounts": False}),
        _reopen({**ref, "auto-read-only": True}),
        _reopen({**ref, "cache": {"direct": True}}),
        ("qmp", ("query-named-block-nodes", {"flat": True})),
        _reopen({**ref, "file": _file(d, "hd0.img", aio="threads"), "cache": {"direct": True}}),
        ("qmp", ("query-named-block-nodes", {"flat": True})),
        _reopen(ref),
        _add(driver="raw", **{"node-name": "r"}, file={**rf}),
        _reopen({**raw, "size": 512}),
        _reopen({**raw, "size": 1000}),
        _reopen({**raw, "offset": 4096, "size": 8192}),
        _reopen({**raw, "read-only": True}),
        _reopen({**raw, "read-only": True, "force-share": True}),
        _reopen({**rf, "read-only": True, "force-share": True}),
        _reopen({**raw, "read-only": False}),
        _reopen(rf),
        _reopen({**raw, "discard": "unmap", "detect-zeroes": "unmap"}),
        ("qmp", ("query-named-block-nodes", {"flat": True})),
        _add(driver="file", **{"node-name": "ro", "read-only": True}, filename=str(d / "hd1.img")),
        _add(driver="raw", **{"node-name": "r2"}, file="ro"),
        _add(driver="raw", **{"node-name": "r3", "read-only": False, "auto-read-only": True},
             file="ro"),
        _add(driver="qcow2", **{"node-name": "q"}, file="ro"),
        _del("r"),
        _del("hd0"),
        _add(driver="qcow2", **{"node-name": "hd0"}, file=_file(d, "hd0.img", "hd0-file")),
        _add(driver="qcow2", **{"node-name": "hd0b"}, file="hd0-file"),
        _add(driver="qcow2", **{"node-name": "hd0c", "read-only": True}, file="hd0-file"),
        _add(driver="raw", **{"node-name": "hd0d"}, file="hd0-file"),
        _reopen({"driver": "qcow2", "node-name": "hd0", "file": "hd0-file", "read-only": True}),
        _add(driver="qcow2", **{"node-name": "hd0e", "read-only": True}, file="hd0-file"),
        _probe("qemu-io", "-f", "qcow2", "-c", "read 0 512", "hd0.img"),
        _del("hd0e"),
        _del("hd0"),
        _probe("qemu-io", "-f", "qcow2", "-c", "read 0 512", "hd0.img"),
    ]


def _script_order(d: Path) -> list[Step]:
    """Which error wins when several apply (the driver's options come before
    children and unchanged options), and queues naming one node twice or a
    node and its child."""
    f1 = str(d / "hd1.img")
    hd1 = {"driver": "qcow2", "node-name": "hd1", "file": "hd1-file"}
    bad = {"l2-cache-entry-size": 131072}
    nb = {"backing": None}
    return [
        _add(driver="qcow2", **{"node-name": "hd1"}, file=_file(d, "hd1.img", "hd1-file")),
        _reopen({**hd1, **bad}),
        _reopen({**hd1, "file": "nope", **bad, **nb}),
        _reopen({**hd1, "file": _file(d, "hd0.img"), **bad, **nb}),
        _reopen({**hd1, "file": _file(d, "hd0.img"), **nb}),
        _reopen({**hd1, "file": _file(d, "hd1.img", locking="off"), **nb}),
        _reopen({**hd1, **nb},
                {"driver": "file", "node-name": "hd1-file", "filename": f1, "read-only": True}),
        _reopen({**hd1, **nb, "read-only": True},
                {"driver": "file", "node-name": "hd1-file", "filename": f1,
                 "read-only": False}),
        ("qmp", ("query-named-block-nodes", {"flat": True})),
        _reopen({**hd1, **nb}, {**hd1, **nb, "read-only": True}),
        ("qmp", ("query-named-block-nodes", {"flat": True})),
        _probe("qemu-io", "-f", "qcow2", "-c", "read 0 512", "hd1.img"),
        _reopen({**hd1, **nb, "read-only": True}, {**hd1, **nb}),
        _probe("qemu-io", "-f", "qcow2", "-c", "read 0 512", "hd1.img"),
    ]


def _script_driver_opts(d: Path) -> list[Step]:
    """Options a driver may change on reopen vs. may return to their default."""
    r = {"driver": "file", "node-name": "f", "filename": str(d / "hd2.img")}
    q = {"driver": "qcow2", "node-name": "q", "file": _file(d, "hd0.img")}
    return [
        _add(**r, **{"drop-cache": False, "aio-max-batch": 4, "x-check-cache-dropped": True}),
        _reopen({**r, "drop-cache": True, "aio-max-batch": 8, "x-check-cache-dropped": False}),
        _reopen({**r, "aio-max-batch": 8}),
        _reopen(r),
        _reopen({**r, "aio-max-batch": 4, "drop-cache": True}),
        _reopen({**r, "aio-max-batch": 4, "drop-cache": False}),
        _add(driver="null-co", **{"node-name": "n", "read-zeroes": True}),
        _reopen({"driver": "null-co", "node-name": "n", "read-zeroes": False}),
        _reopen({"driver": "null-co", "node-name": "n"}),
        _add(driver="raw", **{"node-name": "r", "offset": 512}, file={"driver": "null-co"}),
        _reopen({"driver": "raw", "node-name": "r", "file": {"driver": "null-co"}}),
        _add(**q, **{"lazy-refcounts": True, "cache-clean-interval": 5,
                     "overlap-check": "none"}),
        _reopen(q),
        _reopen({**q, "data-file": "x"}),
        _reopen({**q, "overlap-check": {"template": "all", "main-header": False}}),
        _reopen({**q, "pass-discard-other": True, "cache-size": 1 << 20}),
        # force-share comes back from QemuOpts as a string: never "unchanged".
        _add(driver="file", **{"node-name": "g", "read-only": True, "force-share": True},
             filename=str(d / "hd1.img")),
        _reopen({"driver": "file", "node-name": "g", "filename": str(d / "hd1.img"),
                 "read-only": True, "force-share": True}),
        _reopen({"driver": "file", "node-name": "g", "filename": str(d / "hd1.img"),
                 "read-only": True}),
        _reopen({"driver": "file", "node-name": "g", "filename": str(d / "hd1.img"),
                 "read-only": True, "force-share": False}),
        _add(driver="null-co", **{"node-name": "n2", "size": 1024, "latency-ns": 5}),
        _reopen({"driver": "null-co", "node-name": "n2", "size": 1024, "latency-ns": 5}),
    ]


def _images(d: Path, qemu_img: str) -> None:
    for args in (["create", "-q", "-f", "qcow2", "hd0.img", "3M"],
                 ["create", "-q", "-f", "qcow2", "-b", "hd0.img", "-F", "qcow2", "hd1.img"],
                 ["create", "-q", "-f", "qcow2", "hd2.img", "3M"]):
        subprocess.run([qemu_img, *args], check=True, cwd=d)


def _run(d: Path, qsd: bool, script: Any = _script) -> list[str]:
    vm = VM(d, qsd=qsd)
    out: list[str] = []
    try:
        for kind, what in script(d):
            if kind == "qmp":
                cmd, args = what
                reply = vm.qmp(cmd, **args)
                out.append(f"{cmd} {args} -> {reply}")
            else:
                p = subprocess.run(list(what), cwd=d, capture_output=True, text=True)
                text = (p.stdout + p.stderr).replace(str(d), "DIR")
                # Timing figures differ run to run.
                text = "\n".join(ln for ln in text.splitlines() if "ops/sec" not in ln)
                out.append(f"{' '.join(what)} -> rc={p.returncode} {text}")
    finally:
        vm.shutdown()
    return [o.replace(str(d), "DIR") for o in out]


@pytest.mark.parametrize(
    "script", [_script, _script_options, _script_order, _script_driver_opts])
def test_reopen_script_same_as_qsd(
    tmp_path: Path, qemu_img: str, qsd: str, script: Any
) -> None:
    q, b = tmp_path / "q", tmp_path / "b"
    q.mkdir()
    b.mkdir()
    _images(q, qemu_img)
    _images(b, qemu_img)
    want = _run(q, True, script)
    got = _run(b, False, script)
    for w, g in zip(want, got, strict=True):
        assert g == w
