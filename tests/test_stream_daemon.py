"""block-stream through the real daemon: parallel streams on one chain (iotest
030's layout), crash safety under SIGKILL, QMP responsiveness during a long
stream, and the job's view after a client disconnects."""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.procs import RawClient, start_blockd
from tests.stream_helpers import (
    MiB,
    Session,
    Step,
    add_chain_steps,
    backing_of,
    check_clean,
    compare,
    make_chain,
    run_both,
    run_tool,
    snapshot_raw,
)

pytestmark = pytest.mark.qemu

NODES9 = tuple(f"node{i}" for i in range(9))


def _setup9(d: Path) -> None:
    make_chain(d, "8M", names=NODES9,
               writes={n: [f"write -P {i + 1} {i * 512}k 512k"] for i, n in enumerate(NODES9)})
    for n in ("node2", "node4", "node6", "node8"):
        snapshot_raw(d, f"{n}.qcow2", d / f"{n}.raw")


def test_parallel_streams_and_overlaps() -> None:
    """Four streams on disjoint parts of one chain; overlapping ones refused
    with QEMU's texts (compared with QSD); data and headers checked after."""
    # iotest 030's test_stream_parallel: each job streams one layer (bottom).
    jobs = (("node2", "node1"), ("node4", "node3"), ("node6", "node5"), ("node8", "node7"))
    script: list[Step] = [*add_chain_steps(NODES9)]
    for dev, bottom in jobs:
        script.append(("cmd", "block-stream", {"device": dev, "bottom": bottom,
                                               "job-id": f"s-{dev}", "speed": 1}))
    script += [
        # Overlaps: intermediate, active and filter nodes of running jobs.
        ("cmd", "block-stream", {"device": "node5", "base-node": "node3", "job-id": "x"}),
        ("cmd", "block-stream", {"device": "node3", "job-id": "x"}),
        ("cmd", "block-stream", {"device": "node8", "job-id": "x"}),
        ("cmd", "block-stream", {"device": "node7", "base-node": "node1", "job-id": "x"}),
        ("cmd", "block-stream", {"device": "node4", "base-node": "node2", "job-id": "x"}),
        # Let every job reach its first rate-limit sleep.
        ("sleep", 0.5),
        ("cmd", "query-jobs"),
    ]
    for dev, _ in jobs:
        script.append(("cmd", "block-job-set-speed", {"device": f"s-{dev}", "speed": 0}))
    script.append(("until_total", "JOB_STATUS_CHANGE", "null", 4))
    # Short image paths: a node whose backing was given by reference has a
    # json: file name embedding every path below it, and the job that finishes
    # first decides how deep that goes; keep all variants under QEMU's
    # 1023-byte header limit.
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))
    try:
        res = run_both(short, script, _setup9)
        _check_parallel(res)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _check_parallel(res: dict[str, tuple[list[str], Path]]) -> None:
    qsd, ours = res["qsd"][0], res["blockd"][0]
    # Up to query-jobs (speed 1: each job copied its first chunk and sleeps)
    # everything is deterministic; after the speed changes the four jobs
    # finish in any order.
    cut = next(i for i, line in enumerate(qsd) if '"current-progress"' in line) + 1
    assert ours[:cut] == qsd[:cut]

    def final(lines: list[str]) -> list[str]:
        # QEMU's graph changes at one job's completion drain the others
        # (paused/running pairs, timing-dependent); blockd does not drain there.
        # The speed changes race with the jobs' ends ({} or "not found").
        return sorted(re.sub(r'"speed": \d+', '"speed": S', x) for x in lines
                      if '"paused"' not in x and '"running"' not in x
                      and "not found" not in x and x != '{"return": {}}')
    assert final(ours[cut:]) == final(qsd[cut:])
    for d in (res["qsd"][1], res["blockd"][1]):
        for n in NODES9:
            check_clean(d / f"{n}.qcow2")
        for n in ("node2", "node4", "node6", "node8"):
            compare(d / f"{n}.qcow2", d / f"{n}.raw")
    od = res["blockd"][1]
    # Which job finished first decides whether a backing name is plain or a
    # json: description, so check only that each names the right image.
    for n, base in (("node2", "node0"), ("node4", "node2"), ("node6", "node4"),
                    ("node8", "node6")):
        name, fmt = backing_of(od / f"{n}.qcow2")
        assert name is not None and fmt == "qcow2"
        if name.startswith("json:"):
            name = json.loads(name[5:])["file"]["filename"]
        assert name == str(od / f"{base}.qcow2")


def _big_chain(d: Path, size_mib: int) -> None:
    half = size_mib // 2
    make_chain(d, f"{size_mib}M", writes={
        "base": [f"write -P 7 0 {size_mib}M"],
        "mid": [f"write -P 9 {half}M {size_mib // 4}M"],
    })
    snapshot_raw(d, "top.qcow2", d / "expected.raw")


def _start(d: Path) -> Session:
    s = Session(start_blockd(d), d)
    for step in add_chain_steps():
        s.cmd(step[1], step[2])
    return s


def _progress(s: Session) -> tuple[int, int]:
    r = s.cmd("query-jobs")["return"]
    if not r:
        return -1, -1
    return int(r[0]["current-progress"]), int(r[0]["total-progress"])


@pytest.mark.parametrize("point", ["early", "middle", "pending", "finalize"])
def test_crash_during_stream(tmp_path: Path, point: str) -> None:
    """SIGKILL at a few points: every image passes qemu-img check and the top's
    guest-visible content is what it was."""
    d = tmp_path / "img"
    _big_chain(d, 32)
    s = _start(d)
    manual = point in ("pending", "finalize")
    s.cmd("block-stream", {"device": "top", "job-id": "s0",
                           "speed": 0 if manual else 16 * MiB,
                           "auto-finalize": not manual})
    if point == "middle":
        while True:
            cur, total = _progress(s)
            if total > 0 and cur >= total // 2:
                break
            time.sleep(0.01)
    elif point in ("pending", "finalize"):
        s.until("BLOCK_JOB_PENDING")
        if point == "finalize":
            s.client.send(b'{"execute": "job-finalize", "arguments": {"id": "s0"}}\n')
            time.sleep(0.005)
    s.proc.stop(signal.SIGKILL)
    s.client.close()
    for name in ("base", "mid", "top"):
        check_clean(d / f"{name}.qcow2", leaks_ok=True)
    compare(d / "top.qcow2", d / "expected.raw")


def test_query_jobs_answers_during_long_stream(tmp_path: Path) -> None:
    """While a 256 MiB stream runs, query-jobs keeps answering (counted, not timed)."""
    d = tmp_path / "img"
    _big_chain(d, 256)
    s = _start(d)
    s.cmd("block-stream", {"device": "top", "job-id": "s0", "auto-dismiss": False})
    answers = 0
    while True:
        r = s.cmd("query-jobs")["return"]
        answers += 1
        if r and r[0]["status"] == "concluded":
            break
    s.cmd("job-dismiss", {"id": "s0"})
    s.close()
    # At least one answer came while the job was still running.
    assert answers >= 2
    check_clean(d / "top.qcow2")
    compare(d / "top.qcow2", d / "expected.raw")
    assert json.loads(run_tool("qemu-img", "info", "--output=json", str(d / "top.qcow2"))
                      ).get("backing-filename") is None


def test_job_survives_disconnect_and_shutdown_cancels(tmp_path: Path) -> None:
    """A client that disconnects leaves its job running; the next client sees it.
    SIGTERM cancels a running job cleanly before the images close."""
    d = tmp_path / "img"
    _big_chain(d, 32)
    proc = start_blockd(d)
    s = Session(proc, d)
    for step in add_chain_steps():
        s.cmd(step[1], step[2])
    s.cmd("block-stream", {"device": "top", "job-id": "s0", "speed": 4 * MiB})
    s.client.close()
    time.sleep(0.3)
    c = RawClient(proc.socket, negotiate=True)
    c.send(b'{"execute": "query-jobs"}\n')
    reply: dict[str, Any] = json.loads(c.line())
    while "return" not in reply:
        reply = json.loads(c.line())
    assert reply["return"][0]["status"] == "running"
    assert reply["return"][0]["current-progress"] > 0
    c.close()
    assert proc.stop(signal.SIGTERM) == 0
    for name in ("base", "mid", "top"):
        check_clean(d / f"{name}.qcow2")
    compare(d / "top.qcow2", d / "expected.raw")
    # Cancelled: the top still has its backing file.
    assert backing_of(d / "top.qcow2")[0] == "mid.qcow2"
