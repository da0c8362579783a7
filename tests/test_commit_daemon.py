"""block-commit through the real daemon, compared with qemu-storage-daemon 7.2.

Each scenario runs once against blockd and once against QSD on identical image
chains; replies, events (timestamps dropped, ``#blockNNN`` masked) and node
lists must be identical, and the images each daemon leaves must hold the same
guest data (real ``qemu-img compare``) and pass ``qemu-img check``.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.procs import DaemonProcess, start_blockd, start_qsd
from tests.test_commit_support import (
    MiB,
    Session,
    libvirt_chain_cmds,
    make_chain,
    qemu_img_run,
    qemu_io_run,
)

pytestmark = pytest.mark.qemu

Script = Callable[[Session, Path, list[str]], None]


def _run(start: Callable[..., DaemonProcess], d: Path, qemu_img: str, qemu_io: str,
         script: Script, add_chain: bool = True) -> list[str]:
    d.mkdir()
    make_chain(d, qemu_img, qemu_io)
    proc = start(d)
    out: list[str] = []
    try:
        s = Session(proc, d)
        if add_chain:
            for name, args in libvirt_chain_cmds(d):
                s.ok(name, args)
        script(s, d, out)
        s.drain_events(0.1)
        out += s.take_events()
        s.close()
    finally:
        proc.stop()
    return out


def _compare(tmp_path: Path, qemu_img: str, qemu_io: str, script: Script,
             add_chain: bool = True, check: bool = True,
             drop_events: tuple[str, ...] = (), mask_progress: bool = False) -> list[str]:
    theirs = _run(start_qsd, tmp_path / "q", qemu_img, qemu_io, script, add_chain)
    ours = _run(start_blockd, tmp_path / "b", qemu_img, qemu_io, script, add_chain)
    # Events outside the job layer that blockd's qcow2 does not emit yet.
    theirs = [line for line in theirs if not any(f'"{e}"' in line for e in drop_events)]
    if mask_progress:
        # How far a rate-limited job got when a drained section woke it depends
        # on timing, in QEMU as in blockd: progress and data are not compared.
        theirs = [re.sub(r'"(offset|current-progress)": \d+', "N", x) for x in theirs]
        ours = [re.sub(r'"(offset|current-progress)": \d+', "N", x) for x in ours]
    assert ours == theirs
    if not check:
        # Deliberately corrupted images: only the transcripts are compared.
        return ours
    for name in ("base", "mid", "top"):
        for side in ("q", "b"):
            qemu_img_run(qemu_img, "check", str(tmp_path / side / f"{name}.qcow2"))
    if mask_progress:
        return ours
    # Same guest data in every image and chain both daemons left behind.
    for name in ("base", "mid", "top"):
        r = subprocess.run([qemu_img, "compare", str(tmp_path / "q" / f"{name}.qcow2"),
                            str(tmp_path / "b" / f"{name}.qcow2")],
                           capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stdout, r.stderr)
    return ours


def _cmd(s: Session, out: list[str], name: str, args: dict[str, Any] | None = None) -> None:
    out.append(f">> {name} {s.norm(args)}")
    out.append("<< " + s.norm(s.cmd(name, args)))


def _sync(s: Session, out: list[str], job: str, status: str) -> None:
    s.wait_status(job, status)
    out += s.take_events()


def _wait_first_piece(s: Session, job: str) -> None:
    """Until a rate-limited job has copied its first piece (not recorded)."""
    for _ in range(1000):
        info = s.ok("query-jobs")
        if info and info[0]["current-progress"] > 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"job {job} made no progress")


def _nodes(s: Session, out: list[str]) -> None:
    out.append(repr(s.nodes()))


def _header(d: Path, qemu_img: str, name: str) -> tuple[str | None, str | None]:
    info = json.loads(qemu_img_run(qemu_img, "info", "--output=json", str(d / name)))
    return info.get("backing-filename"), info.get("backing-filename-format")


# -- argument checks -----------------------------------------------------------------


ERROR_CASES: list[dict[str, Any]] = [
    {"device": "nope"},
    {"device": "n3-storage"},
    {"device": "n2-format"},
    {"device": "n1-format", "base-node": "n1-storage"},
    {"device": "n1-format", "top-node": "n1-storage"},
    {"device": "n1-format", "top-node": "n3-format", "base-node": "n3-format"},
    {"device": "n1-format", "top-node": "n3-format"},
    {"device": "n1-format", "top-node": "n2-format", "base-node": "n1-format"},
    {"device": "n1-format", "base": "x", "base-node": "y"},
    {"device": "n1-format", "top": "x", "top-node": "y"},
    {"device": "n1-format", "base": "nope.qcow2"},
    {"device": "n1-format", "top": "nope.qcow2"},
    {"device": "n1-format", "backing-file": "x"},
    {"device": "n1-format", "top-node": "n1-format", "backing-file": "x"},
    {"device": "n1-format", "top-node": "nope"},
    {"device": "n1-format", "base-node": "nope"},
    {"device": "n1-format", "top-node": "n2-format"},
    {"device": "n1-format", "job-id": "1bad", "top-node": "n2-format"},
    {"device": "n1-format", "job-id": "x", "speed": -1},
    {"device": "n1-format", "job-id": "x", "top-node": "n2-format", "speed": -1},
    {"device": "n1-format", "job-id": "x", "filter-node-name": "n1-format"},
    {"device": "n1-format", "job-id": "x", "top-node": "n2-format",
     "filter-node-name": "n1-format"},
    {"device": "n1-format", "job-id": "x", "backing-mask-protocol": True},
    {"device": "n1-format", "job-id": "x", "filter-node-name": "1bad"},
    {"device": "n1-format", "job-id": "x", "top-node": "n2-format", "filter-node-name": "1bad"},
    {"device": "n1-format"},
]


def test_base_cannot_become_writable(tmp_path: Path, qemu_img: str, qemu_io: str,
                                     qsd: str) -> None:
    """The base's file node is read-only without auto-read-only: reopening the
    base read-write fails (after ``created`` for an intermediate commit, before
    any job for an active one) and nothing changes."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        for name, args in libvirt_chain_cmds(d):
            if args["node-name"] == "n3-storage":
                args = {**args, "auto-read-only": False, "read-only": True}
            s.ok(name, args)
        for args in ({"device": "n1-format", "job-id": "a", "top-node": "n2-format"},
                     {"device": "n1-format", "job-id": "b"}):
            _cmd(s, out, "block-commit", args)
            s.drain_events(0.05)
            out += s.take_events()
        _nodes(s, out)

    out = _compare(tmp_path, qemu_img, qemu_io, script, add_chain=False)
    refused = '<< {"error": {"class": "GenericError", "desc": "Block node is read-only"}}'
    assert out.count(refused) == 2


def test_argument_errors(tmp_path: Path, qemu_img: str, qemu_io: str, qsd: str) -> None:
    def script(s: Session, d: Path, out: list[str]) -> None:
        for args in ERROR_CASES:
            _cmd(s, out, "block-commit", args)
            s.drain_events(0.05)
            out += s.take_events()

    out = _compare(tmp_path, qemu_img, qemu_io, script)
    assert any("Device 'nope' not found" in line for line in out)
    assert any("Invalid job ID ''" in line for line in out)


def test_implicit_chain_by_file_name(tmp_path: Path, qemu_img: str, qemu_io: str,
                                     qsd: str) -> None:
    """top/base given as file names on a chain opened from the image headers."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        s.ok("blockdev-add", {"driver": "qcow2", "node-name": "hd0", "file": {
            "driver": "file", "filename": str(d / "top.qcow2")}})
        for extra in ({"top": "top.qcow2"}, {"top": "nope.qcow2"},
                      {"base": str(d / "mid.qcow2"), "top": "mid.qcow2"}):
            _cmd(s, out, "block-commit", {"device": "hd0", **extra})
        _cmd(s, out, "block-commit", {"device": "hd0", "job-id": "j", "top": "mid.qcow2",
                                      "base": "base.qcow2"})
        _sync(s, out, "j", "null")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script, add_chain=False)
    for side in ("q", "b"):
        assert _header(tmp_path / side, qemu_img, "top.qcow2")[0] == \
            str(tmp_path / side / "base.qcow2")


# -- intermediate commit -------------------------------------------------------------


def test_intermediate_libvirt_snapshot_delete(tmp_path: Path, qemu_img: str, qemu_io: str,
                                              qsd: str) -> None:
    """auto-finalize/auto-dismiss false: pending, job-finalize, concluded, dismiss."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        _cmd(s, out, "block-commit", {
            "job-id": "c0", "device": "n1-format", "top-node": "n2-format",
            "base-node": "n3-format", "backing-file": "base.qcow2",
            "auto-finalize": False, "auto-dismiss": False})
        _nodes(s, out)
        s.wait_status("c0", "pending")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_PENDING")
        out += s.take_events()
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "query-block-jobs")
        _cmd(s, out, "blockdev-del", {"node-name": "n2-format"})
        _nodes(s, out)
        _cmd(s, out, "job-finalize", {"id": "c0"})
        _sync(s, out, "c0", "concluded")
        _nodes(s, out)
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "job-dismiss", {"id": "c0"})
        _sync(s, out, "c0", "null")
        _cmd(s, out, "blockdev-del", {"node-name": "n2-format"})
        _cmd(s, out, "blockdev-del", {"node-name": "n2-storage"})
        _nodes(s, out)

    out = _compare(tmp_path, qemu_img, qemu_io, script)
    assert any("commit_top" in line for line in out)
    for side in ("q", "b"):
        assert _header(tmp_path / side, qemu_img, "top.qcow2") == ("base.qcow2", "qcow2")


def test_intermediate_defaults_and_data(tmp_path: Path, qemu_img: str, qemu_io: str,
                                        qsd: str) -> None:
    def script(s: Session, d: Path, out: list[str]) -> None:
        _cmd(s, out, "block-commit", {"job-id": "c0", "device": "n1-format",
                                      "top-node": "n2-format"})
        _sync(s, out, "c0", "null")
        _cmd(s, out, "query-block-jobs")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script)
    d = tmp_path / "b"
    # The committed data is in base now: base + top alone show the old guest view.
    data = qemu_img_run(qemu_img, "info", "--output=json", str(d / "top.qcow2"))
    assert json.loads(data)["backing-filename"] == str(d / "base.qcow2")
    _expect_pattern(qemu_io, d / "base.qcow2", [(0, MiB, 0xAA), (MiB, MiB, 0xBB),
                                                (2 * MiB, 2 * MiB, 0xAA)])
    _expect_pattern(qemu_io, d / "top.qcow2", [(0, MiB, 0xAA), (MiB, MiB // 2, 0xBB),
                                               (MiB + MiB // 2, MiB, 0xCC),
                                               (MiB * 5 // 2, MiB // 2, 0xAA),
                                               (3 * MiB, 65536, 0)])


def _expect_pattern(qemu_io: str, path: Path, ranges: list[tuple[int, int, int]]) -> None:
    cmds: list[str] = []
    for off, n, pat in ranges:
        cmds += ["-c", f"read -P {pat} {off} {n}"]
    r = subprocess.run([qemu_io, "-r", "-f", "qcow2", *cmds, str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout


def test_intermediate_cancel_and_speed(tmp_path: Path, qemu_img: str, qemu_io: str,
                                       qsd: str) -> None:
    """A speed-limited commit cancelled midway: CANCELLED, filter gone, base
    read-only again; set-speed 0 then lets a second one finish."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        _cmd(s, out, "block-commit", {"job-id": "c0", "device": "n1-format",
                                      "top-node": "n2-format", "speed": 65536})
        time.sleep(0.3)
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "block-job-cancel", {"device": "c0"})
        _sync(s, out, "c0", "null")
        _nodes(s, out)
        _cmd(s, out, "block-commit", {"job-id": "c1", "device": "n1-format",
                                      "top-node": "n2-format", "speed": 65536,
                                      "auto-finalize": False})
        time.sleep(0.3)
        _cmd(s, out, "block-job-set-speed", {"device": "c1", "speed": 0})
        s.wait_status("c1", "pending")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_PENDING")
        out += s.take_events()
        _cmd(s, out, "block-job-finalize", {"id": "c1"})
        _sync(s, out, "c1", "null")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script)


def test_reopen_and_delete_during_commit(tmp_path: Path, qemu_img: str, qemu_io: str,
                                         qsd: str) -> None:
    """Frozen links, the implicit filter and the job's blockers (iotest 245's
    test_block_commit texts)."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        # Enough allocated pieces in mid that the job is still running when
        # it is cancelled, however often a drained section wakes it early.
        qemu_io_run(qemu_io, "-f", "qcow2", "-c", f"write -P 0xbb 0 {4 * MiB}",
                    str(d / "mid.qcow2"))
        for name, args in libvirt_chain_cmds(d):
            s.ok(name, args)
        _cmd(s, out, "block-commit", {"job-id": "c0", "device": "n1-format",
                                      "top-node": "n2-format", "speed": 65536})
        steps: list[tuple[str, dict[str, Any]]] = [
            ("block-commit", {"job-id": "c1", "device": "n1-format", "top-node": "n2-format"}),
            ("blockdev-del", {"node-name": "n2-format"}),
            ("blockdev-del", {"node-name": "n3-format"}),
            ("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "n1-format",
                                              "file": "n1-storage", "backing": None}]}),
        ]
        for name, args in steps:
            _cmd(s, out, name, args)
        _nodes(s, out)
        _cmd(s, out, "block-job-cancel", {"device": "c0"})
        _sync(s, out, "c0", "null")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script, add_chain=False, mask_progress=True)


# -- active commit -------------------------------------------------------------------


def test_active_commit_manual_finalize(tmp_path: Path, qemu_img: str, qemu_io: str,
                                       qsd: str) -> None:
    def script(s: Session, d: Path, out: list[str]) -> None:
        _cmd(s, out, "block-commit", {"job-id": "c0", "device": "n1-format",
                                      "auto-finalize": False, "auto-dismiss": False})
        s.wait_status("c0", "ready")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
        out += s.take_events()
        _nodes(s, out)
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "query-block-jobs")
        _cmd(s, out, "job-finalize", {"id": "c0"})
        _cmd(s, out, "job-complete", {"id": "c0"})
        s.wait_status("c0", "pending")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_PENDING")
        out += s.take_events()
        _cmd(s, out, "job-finalize", {"id": "c0"})
        _sync(s, out, "c0", "concluded")
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "job-dismiss", {"id": "c0"})
        _sync(s, out, "c0", "null")
        _nodes(s, out)

    out = _compare(tmp_path, qemu_img, qemu_io, script)
    assert any("mirror_top" in line for line in out)
    # base now holds the whole guest view of top.
    for side in ("q", "b"):
        d = tmp_path / side
        r = subprocess.run([qemu_img, "compare", str(d / "base.qcow2"), str(d / "top.qcow2")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("verb", ["block-job-complete", "block-job-cancel", "job-cancel"])
def test_active_commit_ready_then(tmp_path: Path, qemu_img: str, qemu_io: str, qsd: str,
                                  verb: str) -> None:
    """Defaults: complete pivots; block-job-cancel on READY completes without a
    pivot (COMPLETED); job-cancel forces (CANCELLED)."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        _cmd(s, out, "block-commit", {"job-id": "c0", "device": "n1-format"})
        s.wait_status("c0", "ready")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
        out += s.take_events()
        if verb == "job-cancel":
            _cmd(s, out, verb, {"id": "c0"})
        else:
            _cmd(s, out, verb, {"device": "c0"})
        _sync(s, out, "c0", "null")
        _cmd(s, out, "query-block-jobs")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script)


def test_active_commit_cancel_before_ready(tmp_path: Path, qemu_img: str, qemu_io: str,
                                           qsd: str) -> None:
    def script(s: Session, d: Path, out: list[str]) -> None:
        _cmd(s, out, "block-commit", {"job-id": "c1", "device": "n1-format",
                                      "speed": 65536, "auto-dismiss": False})
        time.sleep(0.3)
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "block-job-cancel", {"device": "c1"})
        _sync(s, out, "c1", "concluded")
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "job-dismiss", {"id": "c1"})
        _sync(s, out, "c1", "null")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script)


# -- I/O errors ----------------------------------------------------------------------


def corrupt_l2_entry(path: Path, guest_offset: int, cluster: int = 65536) -> None:
    """Make the L2 entry of ``guest_offset`` point at an unaligned host offset:
    reading that cluster fails with EIO in QEMU and in blockd alike (the image
    is flagged corrupt in memory; read-only images are not written)."""
    with open(path, "r+b") as f:
        f.seek(40)
        l1 = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1)
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
        pos = l2 + (guest_offset // cluster) * 8
        f.seek(pos)
        entry = struct.unpack(">Q", f.read(8))[0]
        f.seek(pos)
        f.write(struct.pack(">Q", entry + 512))


@pytest.mark.parametrize("on_error", ["report", "stop", "ignore-then-cancel"])
def test_intermediate_read_error(tmp_path: Path, qemu_img: str, qemu_io: str, qsd: str,
                                 on_error: str) -> None:
    def script(s: Session, d: Path, out: list[str]) -> None:
        corrupt_l2_entry(d / "mid.qcow2", MiB)
        for name, args in libvirt_chain_cmds(d):
            s.ok(name, args)
        policy = on_error.split("-")[0]
        # A (generous) speed makes both walk the image in QEMU's 512 KiB steps.
        _cmd(s, out, "block-commit", {"job-id": "e0", "device": "n1-format",
                                      "top-node": "n2-format", "on-error": policy,
                                      "auto-dismiss": False, "speed": 1 << 30})
        if policy == "stop":
            _sync(s, out, "e0", "paused")
            _cmd(s, out, "query-block-jobs")
            _cmd(s, out, "block-job-cancel", {"device": "e0", "force": True})
        if policy == "ignore":
            s.wait_event(lambda e: e["event"] == "BLOCK_JOB_ERROR")
            _cmd(s, out, "block-job-cancel", {"device": "e0"})
            s.wait_status("e0", "concluded")
            # The piece is retried until the cancel: any number of identical
            # error events, kept once.
            for ev in s.take_events():
                if "BLOCK_JOB_ERROR" not in ev or ev not in out:
                    out.append(ev)
        else:
            _sync(s, out, "e0", "concluded")
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "job-dismiss", {"id": "e0"})
        _sync(s, out, "e0", "null")
        _nodes(s, out)

    out = _compare(tmp_path, qemu_img, qemu_io, script, add_chain=False, check=False)
    assert any("BLOCK_JOB_ERROR" in line for line in out)


def test_active_commit_read_error(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """An error while looking for the allocated ranges (mirror_dirty_init) fails
    the job at once, without BLOCK_JOB_ERROR, and leaves the chain as it was.
    (qemu-storage-daemon 7.2 itself dies on an assertion, ``!child->frozen``
    in bdrv_replace_child_noperm, in this case, so there is nothing to compare
    with; the sequence is QEMU's failing-job sequence.)"""
    d = tmp_path / "b"
    d.mkdir()
    make_chain(d, qemu_img, qemu_io)
    corrupt_l2_entry(d / "top.qcow2", 2 * MiB)
    proc = start_blockd(d)
    try:
        s = Session(proc, d)
        for name, args in libvirt_chain_cmds(d):
            s.ok(name, args)
        before = s.nodes()
        s.ok("block-commit", {"job-id": "e1", "device": "n1-format"})
        s.wait_status("e1", "null")
        events = s.take_events()
        assert events == [
            '{"event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "e1"}}',
            '{"event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "e1"}}',
            # qcow2_signal_corruption() on the unaligned entry (fatal: the top
            # is writable), from the job's block-status scan.
            '{"event": "BLOCK_IMAGE_CORRUPTED", "data": {"device": "", "msg": "Cluster '
            'allocation offset 0xd0200 unaligned (L2 offset: 0x40000, L2 index: 0x20)", '
            '"node-name": "n1-format", "fatal": true}}',
            '{"event": "JOB_STATUS_CHANGE", "data": {"status": "aborting", "id": "e1"}}',
            events[4],
            '{"event": "JOB_STATUS_CHANGE", "data": {"status": "concluded", "id": "e1"}}',
            '{"event": "JOB_STATUS_CHANGE", "data": {"status": "null", "id": "e1"}}',
        ]
        assert '"BLOCK_JOB_COMPLETED"' in events[4]
        assert '"error": "Input/output error"' in events[4]
        # The base stays read-write, as after a cancelled active commit in QSD.
        after = [n if n[0] != "n3-format" else (n[0], True, *n[2:]) for n in s.nodes()]
        assert after == before
        s.close()
    finally:
        proc.stop()


def test_active_commit_into_mid_with_pause(tmp_path: Path, qemu_img: str, qemu_io: str,
                                           qsd: str) -> None:
    """Active commit into the middle image, libvirt style (auto-dismiss false):
    pause/resume while READY (standby), query, complete, dismiss."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        _cmd(s, out, "block-commit", {"job-id": "c0", "device": "n1-format",
                                      "base-node": "n2-format", "auto-dismiss": False})
        s.wait_status("c0", "ready")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
        out += s.take_events()
        _cmd(s, out, "job-pause", {"id": "c0"})
        _sync(s, out, "c0", "standby")
        _cmd(s, out, "query-block-jobs")
        _cmd(s, out, "job-resume", {"id": "c0"})
        _sync(s, out, "c0", "ready")
        _cmd(s, out, "job-complete", {"id": "c0"})
        _sync(s, out, "c0", "concluded")
        _cmd(s, out, "query-jobs")
        _cmd(s, out, "job-dismiss", {"id": "c0"})
        _sync(s, out, "c0", "null")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script)
    for side in ("q", "b"):
        d = tmp_path / side
        r = subprocess.run([qemu_img, "compare", str(d / "mid.qcow2"), str(d / "top.qcow2")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("mode", ["intermediate", "active"])
def test_base_shorter_than_top_grows(tmp_path: Path, qemu_img: str, qemu_io: str, qsd: str,
                                     mode: str) -> None:
    """A 2 MiB base under 4 MiB layers: the job resizes the base first."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        for name in ("base", "mid", "top"):
            (d / f"{name}.qcow2").unlink()
        qemu_img_run(qemu_img, "create", "-f", "qcow2", str(d / "base.qcow2"), str(2 * MiB))
        qemu_io_run(qemu_io, "-f", "qcow2", "-c", f"write -P 0xaa 0 {2 * MiB}",
                    str(d / "base.qcow2"))
        qemu_img_run(qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                     str(d / "mid.qcow2"), str(4 * MiB))
        qemu_io_run(qemu_io, "-f", "qcow2", "-c", f"write -P 0xbb {MiB} {2 * MiB}",
                    str(d / "mid.qcow2"))
        qemu_img_run(qemu_img, "create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
                     str(d / "top.qcow2"))
        for name, add in libvirt_chain_cmds(d):
            s.ok(name, add)
        args: dict[str, Any] = {"job-id": "c0", "device": "n1-format"}
        if mode == "intermediate":
            args["top-node"] = "n2-format"
        _cmd(s, out, "block-commit", args)
        if mode == "active":
            s.wait_status("c0", "ready")
            s.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
            _cmd(s, out, "job-complete", {"id": "c0"})
        _sync(s, out, "c0", "null")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script, add_chain=False)
    info = json.loads(qemu_img_run(qemu_img, "info", "--output=json",
                                   str(tmp_path / "b" / "base.qcow2")))
    assert info["virtual-size"] == 4 * MiB


def test_cancel_while_pending(tmp_path: Path, qemu_img: str, qemu_io: str, qsd: str) -> None:
    """Cancelling a job that waits for job-finalize: the intermediate commit
    aborts (chain unchanged, base read-only again), the completed active
    commit aborts without its pivot."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        _cmd(s, out, "block-commit", {"job-id": "c0", "device": "n1-format",
                                      "top-node": "n2-format", "auto-finalize": False,
                                      "auto-dismiss": False})
        s.wait_status("c0", "pending")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_PENDING")
        _cmd(s, out, "job-cancel", {"id": "c0"})
        _sync(s, out, "c0", "concluded")
        _cmd(s, out, "query-jobs")
        _nodes(s, out)
        _cmd(s, out, "block-commit", {"job-id": "c1", "device": "n1-format",
                                      "auto-finalize": False})
        s.wait_status("c1", "ready")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY")
        _cmd(s, out, "block-job-complete", {"device": "c1"})
        s.wait_status("c1", "pending")
        s.wait_event(lambda e: e["event"] == "BLOCK_JOB_PENDING")
        _cmd(s, out, "block-job-cancel", {"device": "c1"})
        _sync(s, out, "c1", "null")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script)


@pytest.mark.parametrize("mode", ["intermediate", "active"])
def test_named_filter_node(tmp_path: Path, qemu_img: str, qemu_io: str, qsd: str,
                           mode: str) -> None:
    """filter-node-name: the job's filter has the user's name and drv
    commit_top/mirror_top; it is in use by the job until the job ends."""

    def script(s: Session, d: Path, out: list[str]) -> None:
        args: dict[str, Any] = {"job-id": "c0", "device": "n1-format", "speed": 1,
                                "filter-node-name": "flt"}
        if mode == "intermediate":
            args["top-node"] = "n2-format"
        _cmd(s, out, "block-commit", args)
        # Names, drivers and read-only flags (the overlay's backing_file with a
        # named filter in between is the query code's business).
        out.append(repr([n[:3] for n in s.nodes()]))
        # (Detaching the named filter with blockdev-reopen kills QSD 7.2, in
        # both modes: nothing to compare there.)
        _cmd(s, out, "blockdev-del", {"node-name": "flt"})
        _wait_first_piece(s, "c0")
        _cmd(s, out, "job-cancel", {"id": "c0"})
        _sync(s, out, "c0", "null")
        _nodes(s, out)

    _compare(tmp_path, qemu_img, qemu_io, script, mask_progress=True)
