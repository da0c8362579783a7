"""Crash safety: a writer killed with SIGKILL leaves an image qemu-img check accepts.

A child process writes through blockd's qcow2 driver (random partial writes,
zero writes, discards, compressed writes) and reports each completed request on
stdout.  The parent kills it at a random moment, then checks with real
``qemu-img check`` (leaks allowed, corruption never) and compares the image as
real qemu-img reads it with the expected content: every completed request must
be there; only the bytes of the request in flight at the kill are undetermined.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_qcow2_util import run

pytestmark = pytest.mark.qemu

SIZE = 24 << 20

CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from blockd.drivers.open import open_image, close_image

    def ops(seed, size, cs):
        rnd = random.Random(seed)
        i = 0
        while True:
            kind = rnd.choice("wwwwwwzdc")
            if kind == "c":
                off = rnd.randrange(0, size // cs) * cs
                yield i, kind, off, cs, bytes([i % 251 + 1]) * cs
            else:
                off = rnd.randrange(0, size - 1)
                ln = min(rnd.randrange(1, 3 * cs + 1000), size - off)
                yield i, kind, off, ln, bytes([i % 251 + 1]) * ln
            i += 1

    async def main():
        path, seed, start, cs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        drv = await open_image(path, "qcow2", read_only=False)
        size = drv.get_length()
        print("open", flush=True)
        for i, kind, off, ln, data in ops(seed, size, cs):
            if i < start:
                continue
            if kind == "w":
                await drv.write(off, data)
            elif kind == "z":
                await drv.write_zeroes(off, ln, may_unmap=bool(i % 2))
            elif kind == "d":
                await drv.discard(off, ln)
            else:
                try:
                    await drv.write(off, data, compressed=True)
                except OSError:
                    # target cluster already allocated: QEMU refuses too
                    print(f"{i} skip", flush=True)
                    continue
            print(f"{i}", flush=True)

    asyncio.run(main())
    """
)


def _expected_ops(seed: int, size: int, cs: int, count: int) -> list[tuple[str, int, int, int]]:
    """The child's first ``count`` requests: (kind, offset, length, fill byte)."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        kind = rnd.choice("wwwwwwzdc")
        if kind == "c":
            off = rnd.randrange(0, size // cs) * cs
            ln = cs
        else:
            off = rnd.randrange(0, size - 1)
            ln = min(rnd.randrange(1, 3 * cs + 1000), size - off)
        out.append((kind, off, ln, i % 251 + 1))
    return out


def _apply(img: bytearray, op: tuple[str, int, int, int], cs: int, skipped: bool) -> None:
    kind, off, ln, fill = op
    if kind == "w" or (kind == "c" and not skipped):
        img[off : off + ln] = bytes([fill]) * ln
    elif kind == "z":
        img[off : off + ln] = bytes(ln)
    elif kind == "d":
        # Whole clusters only; v3 discard makes them read as zeros.
        a = -(-off // cs) * cs
        b = off + ln if off + ln == len(img) else (off + ln) // cs * cs
        if a < b:
            img[a:b] = bytes(b - a)


def _record(line: bytes, skipped: set[int]) -> int:
    parts = line.split()
    if len(parts) > 1:
        skipped.add(int(parts[0]))
    return int(parts[0])


def _run_child(
    path: Path, seed: int, start: int, cs: int, kill_after: float, skipped: set[int]
) -> int:
    """Run the writer from request ``start``; returns how many requests completed
    (and adds refused compressed writes to ``skipped``)."""
    env = dict(os.environ)
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(seed), str(start), str(cs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert p.stdout is not None
    last = start - 1
    opened = False
    deadline = None
    buf = b""
    try:
        while True:
            r, _, _ = select.select([p.stdout], [], [], 0.01)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    if ln == b"open":
                        opened = True
                        deadline = time.monotonic() + kill_after
                    elif ln:
                        last = _record(ln, skipped)
            if deadline is not None and time.monotonic() >= deadline:
                break
            if p.poll() is not None and not r:
                break
        p.send_signal(signal.SIGKILL)
        p.wait()
        # Lines written before the kill may still sit in the pipe; a line cut
        # short by the kill does not count (its request is treated as in flight).
        rest = p.stdout.read() or b""
        *complete, _partial = (buf + rest).split(b"\n")
        for ln in complete:
            if ln and ln != b"open":
                last = _record(ln, skipped)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read().decode() if p.stderr else ""
    assert opened, err
    assert "Traceback" not in err, err
    return last + 1


@pytest.mark.parametrize(
    "variant",
    ["plain", "backing", "small-clusters", "lazy-refcounts", "subclusters"],
)
def test_sigkill_while_allocating(tmp_path: Path, qemu_img: str, variant: str) -> None:
    img = tmp_path / "crash.qcow2"
    cs = 65536
    backing = bytes(SIZE)
    if variant == "backing":
        base = tmp_path / "base.raw"
        rnd = random.Random(1)
        backing = rnd.randbytes(SIZE)
        base.write_bytes(backing)
        run(qemu_img, "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(img))
    elif variant == "small-clusters":
        # 512-byte clusters, 64-bit refcounts: refcount blocks and the refcount
        # table must grow while the writer runs.
        cs = 512
        run(
            qemu_img,
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512,refcount_bits=64",
            str(img),
            str(SIZE),
        )
    elif variant == "subclusters":
        run(qemu_img, "create", "-f", "qcow2", "-o", "extended_l2=on", str(img), str(SIZE))
    elif variant == "lazy-refcounts":
        run(qemu_img, "create", "-f", "qcow2", "-o", "lazy_refcounts=on", str(img), str(SIZE))
    else:
        run(qemu_img, "create", "-f", "qcow2", str(img), str(SIZE))

    seed = {
        "plain": 11,
        "backing": 12,
        "small-clusters": 13,
        "lazy-refcounts": 14,
        "subclusters": 15,
    }[variant]
    rnd = random.Random(seed)
    expect = bytearray(backing)
    skipped: set[int] = set()
    done = 0
    for _round in range(4):
        completed = _run_child(img, seed, done, cs, rnd.uniform(0.05, 0.6), skipped)
        ops = _expected_ops(seed, SIZE, cs, completed + 1)
        for i in range(done, completed):
            _apply(expect, ops[i], cs, i in skipped)
        check = run(qemu_img, "check", str(img), check=False)
        assert check.returncode in (0, 3), check.stdout + check.stderr
        assert "ERROR" not in check.stderr, check.stderr
        flat = tmp_path / "flat.raw"
        run(qemu_img, "convert", "-U", "-O", "raw", str(img), str(flat))
        got = flat.read_bytes()
        # The request in flight at the kill may have landed partly: mask its bytes
        # (and whole clusters for COW/discard effects around it).
        _kind, off, ln, _ = ops[completed]
        lo = off // cs * cs
        hi = min(SIZE, -(-(off + ln) // cs) * cs)
        got_m = got[:lo] + bytes(hi - lo) + got[hi:]
        exp_m = bytes(expect[:lo]) + bytes(hi - lo) + bytes(expect[hi:])
        if got_m != exp_m:
            bad = next(i for i in range(SIZE) if got_m[i] != exp_m[i])
            pytest.fail(f"round {_round}: mismatch at {bad} after {completed} requests")
        # Adopt whatever the in-flight request left behind.
        expect[lo:hi] = got[lo:hi]
        done = completed + 1
