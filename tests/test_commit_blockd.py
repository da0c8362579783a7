"""block-commit in blockd alone: guest writes during an active commit (HMP
``qemu-io``, which qemu-storage-daemon does not have) and crash safety (SIGKILL
at several points).  Data is checked with real ``qemu-img``/``qemu-io``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.procs import DaemonProcess, start_blockd
from tests.test_commit_support import (
    MiB,
    Session,
    libvirt_chain_cmds,
    make_chain,
    qemu_img_run,
    qemu_io_run,
)

pytestmark = pytest.mark.qemu

GUEST_WRITES = [
    "write -P 0xdd 0 64k",
    "write -P 0xee 3M 128k",
    "write -z 1536k 64k",
    "write -P 0x11 4000k 96k",
]


def _chain(tmp_path: Path, qemu_img: str, qemu_io: str) -> tuple[Path, DaemonProcess, Session]:
    d = tmp_path / "img"
    d.mkdir()
    make_chain(d, qemu_img, qemu_io)
    # The guest view before the job: a raw copy of the whole chain.
    qemu_img_run(qemu_img, "convert", "-O", "raw", str(d / "top.qcow2"), str(d / "expected.raw"))
    proc = start_blockd(d)
    s = Session(proc, d)
    for name, args in libvirt_chain_cmds(d):
        s.ok(name, args)
    return d, proc, s


def _same(qemu_img: str, image: Path, raw: Path) -> bool:
    r = subprocess.run([qemu_img, "compare", "-f", "qcow2", "-F", "raw", str(image), str(raw)],
                       capture_output=True, text=True)
    return r.returncode == 0


def _check_all(qemu_img: str, d: Path, leaks_ok: bool = False) -> None:
    """qemu-img check on every image: clean; after a SIGKILL leaked clusters
    (exit code 3: "no harm to data") are tolerated, errors never."""
    for name in ("base", "mid", "top"):
        r = subprocess.run([qemu_img, "check", str(d / f"{name}.qcow2")],
                           capture_output=True, text=True)
        if leaks_ok and r.returncode == 3:
            assert "ERROR" not in r.stdout + r.stderr, (name, r.stdout, r.stderr)
            assert "leaked clusters were found" in r.stdout, (name, r.stdout)
            continue
        assert r.returncode == 0, (name, r.stdout, r.stderr)


def _apply_writes(qemu_io: str, raw: Path, writes: list[str]) -> None:
    args: list[str] = []
    for w in writes:
        args += ["-c", w]
    qemu_io_run(qemu_io, "-f", "raw", *args, str(raw))


# -- writes during an active commit --------------------------------------------------


@pytest.mark.parametrize("when", ["ready", "running"])
def test_guest_writes_reach_base(tmp_path: Path, qemu_img: str, qemu_io: str,
                                 when: str) -> None:
    """Writes to the active layer while the job runs or is READY are mirrored
    into the base before the pivot: afterwards the base alone shows the guest
    view including them."""
    d, proc, s = _chain(tmp_path, qemu_img, qemu_io)
    try:
        args: dict[str, object] = {"job-id": "c0", "device": "n1-format",
                                   "auto-finalize": False}
        if when == "running":
            args["speed"] = 65536
        s.ok("block-commit", args)
        if when == "ready":
            s.wait_status("c0", "ready")
        for w in GUEST_WRITES:
            assert s.hmp(f'qemu-io n1-format "{w}"') == ""
        if when == "running":
            jobs = s.ok("query-jobs")
            assert jobs[0]["status"] == "running"
            s.ok("block-job-set-speed", {"device": "c0", "speed": 0})
            s.wait_status("c0", "ready")
        s.ok("job-complete", {"id": "c0"})
        s.wait_status("c0", "pending")
        s.ok("job-finalize", {"id": "c0"})
        s.wait_status("c0", "null")
        s.close()
    finally:
        proc.stop()
    _check_all(qemu_img, d)
    _apply_writes(qemu_io, d / "expected.raw", GUEST_WRITES)
    assert _same(qemu_img, d / "top.qcow2", d / "expected.raw")
    assert _same(qemu_img, d / "base.qcow2", d / "expected.raw")


# -- crash safety --------------------------------------------------------------------


def _kill_and_check(qemu_img: str, d: Path, proc: DaemonProcess, s: Session,
                    writes: list[str], qemu_io: str) -> None:
    proc.kill()
    s.close()
    _check_all(qemu_img, d, leaks_ok=True)
    if writes:
        _apply_writes(qemu_io, d / "expected.raw", writes)
    # The active layer's chain, whatever its header names now, is unchanged.
    assert _same(qemu_img, d / "top.qcow2", d / "expected.raw")


Step = Callable[[Session], None]


def _intermediate(extra: dict[str, object]) -> Step:
    def step(s: Session) -> None:
        s.ok("block-commit", {"job-id": "c0", "device": "n1-format", "top-node": "n2-format",
                              "base-node": "n3-format", "backing-file": "base.qcow2",
                              **extra})
    return step


def _mid_way(s: Session) -> None:
    _intermediate({"speed": 1 << 20})(s)
    time.sleep(0.5)


def _at_pending(s: Session) -> None:
    _intermediate({"auto-finalize": False})(s)
    s.wait_status("c0", "pending")


def _during_finalize(delay: float) -> Step:
    def step(s: Session) -> None:
        _at_pending(s)
        # The graph change and header rewrite run in the finalize command: the
        # kill lands before, inside or after it.
        s.client.send(b'{"execute": "job-finalize", "arguments": {"id": "c0"}}\n')
        time.sleep(delay)
    return step


def _after_commit(s: Session) -> None:
    _intermediate({})(s)
    s.wait_status("c0", "null")


@pytest.mark.parametrize("step", [
    _mid_way, _at_pending, _during_finalize(0.0), _during_finalize(0.002),
    _during_finalize(0.01), _after_commit,
], ids=["mid-way", "pending", "finalize-0ms", "finalize-2ms", "finalize-10ms", "done"])
def test_crash_intermediate(tmp_path: Path, qemu_img: str, qemu_io: str, step: Step) -> None:
    d, proc, s = _chain(tmp_path, qemu_img, qemu_io)
    try:
        step(s)
        _kill_and_check(qemu_img, d, proc, s, [], qemu_io)
    finally:
        proc.stop()
    # Whatever the header names, base holds mid's data where mid had it.
    backing = qemu_img_run(qemu_img, "info", str(d / "top.qcow2"))
    assert "backing file: base.qcow2" in backing or "backing file: mid.qcow2" in backing


@pytest.mark.parametrize("point", ["ready", "complete-0ms", "complete-5ms", "done"])
def test_crash_active(tmp_path: Path, qemu_img: str, qemu_io: str, point: str) -> None:
    d, proc, s = _chain(tmp_path, qemu_img, qemu_io)
    try:
        s.ok("block-commit", {"job-id": "c0", "device": "n1-format"})
        s.wait_status("c0", "ready")
        for w in GUEST_WRITES:
            s.hmp(f'qemu-io n1-format "{w}"')
        if point.startswith("complete"):
            s.client.send(b'{"execute": "job-complete", "arguments": {"id": "c0"}}\n')
            time.sleep(int(point.split("-")[1][:-2]) / 1000)
        elif point == "done":
            s.ok("job-complete", {"id": "c0"})
            s.wait_status("c0", "null")
        _kill_and_check(qemu_img, d, proc, s, GUEST_WRITES, qemu_io)
        if point == "done":
            assert _same(qemu_img, d / "base.qcow2", d / "expected.raw")
    finally:
        proc.stop()


def test_expected_guest_view(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """The chain the tests start from has the documented layers (a sanity check
    of the fixture, read with real qemu-io)."""
    d = tmp_path
    make_chain(d, qemu_img, qemu_io)
    out = qemu_io_run(qemu_io, "-r", "-f", "qcow2",
                      "-c", f"read -P 0xaa 0 {MiB}", "-c", f"read -P 0xbb {MiB} {MiB // 2}",
                      "-c", f"read -P 0xcc {MiB * 3 // 2} {MiB}",
                      "-c", f"read -P 0 {3 * MiB} 64k", str(d / "top.qcow2"))
    assert "Pattern verification failed" not in out
