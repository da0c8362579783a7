"""blockd-io against real qemu-io: same commands, byte-identical output and status.

Only the numbers of the timing line differ between runs and are masked; the
program name in diagnostics is masked too (QEMU prints its own argv[0]).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blockd.drivers.open import close_image, open_image
from blockd.tools.qemuio import run_qemu_io_command

pytestmark = pytest.mark.qemu

BLOCKD_IO = str(Path(sys.executable).with_name("blockd-io"))

_RATE = re.compile(r"ops; [0-9:.]+ sec \([^)]*\)$", re.M)
_CSV = re.compile(r"^(\d+,\d+),[0-9:.]+,[0-9.infa]+,[0-9.infa]+$", re.M)
_PROG = re.compile(r"(?:/[\w.\-/]*/)?\b(qemu-io|blockd-io)\b")


def mask(text: str) -> str:
    text = _RATE.sub("ops; T", text)
    text = _CSV.sub(r"\1,T", text)
    return _PROG.sub("PROG", text)


def run(tool: str, args: list[str], stdin: str | None = None,
        cwd: Path | None = None) -> tuple[str, str, int]:
    r = subprocess.run([tool, *args], capture_output=True, text=True, input=stdin,
                       timeout=120, cwd=cwd)
    return mask(r.stdout), mask(r.stderr), r.returncode


def compare(qemu_io: str, args: list[str], stdin: str | None = None,
            cwd: Path | None = None) -> tuple[str, str, int]:
    q = run(qemu_io, args, stdin, cwd)
    b = run(BLOCKD_IO, args, stdin, cwd)
    assert b[0] == q[0], "stdout differs"
    assert b[1] == q[1], "stderr differs"
    assert b[2] == q[2], "exit status differs"
    return q


def cmds(*lines: str) -> list[str]:
    out: list[str] = []
    for line in lines:
        out += ["-c", line]
    return out


def twin_images(tmp_path: Path, qemu_img: str, fmt: str, size: str,
                *extra: str) -> tuple[str, str]:
    a = tmp_path / f"q.{fmt}"
    subprocess.run([qemu_img, "create", "-f", fmt, *extra, str(a), size], check=True,
                   capture_output=True)
    b = tmp_path / f"b.{fmt}"
    shutil.copy(a, b)
    return str(a), str(b)


RAW_SCRIPT = cmds(
    "write -P 0x41 0 64k",
    "read -P 0x41 0 64k",
    "read -P 0x42 0 512",
    "read -v 0 40",
    "read -v -P 0x41 -s 8 -l 8 0 100",
    "map",
    "alloc 0 1M",
    "alloc 0",
    "alloc 1 2",
    "length",
    "discard 0 4k",
    "write -z 8k 4k",
    "write -z -u 12k 4k",
    "flush",
    "bogus",
    "read 0",
    "read x 1",
    "read -C 0 512",
    "read -C -q 0 512",
    "write -c 0 512",
    "write -c 1 512",
    "info",
    "read 8M 1",
    "read 0 3G",
    "read -l 5 0 512",
    "read -P 0 -s 600 0 512",
    "read -P 300 0 1",
    "write -z -P 1 0 1",
    "write -u 0 1",
    "write -n 0 1",
    "write 0 3G",
    "write -f -P 9 4M-1 1",
    "readv -P 3 0 512 512",
    "writev -P 3 0 1k 1k",
    "aio_read -v -P 3 0 32",
    "aio_flush",
    "alloc 9M 1",
    "read -Z 0 1",
    "read 0x10 0x20",
    "read 1.5k 1",
    "read 1.5 1",
    "read 99999999999999999999 1",
    "write -P 0x5a 1k 100",
    "read -v 1000 48",
    "truncate 1M 2M",
    "length",
    "map",
    "truncate -m bogus 1M",
    "truncate -m falloc 512k",
    "truncate 6M",
    "map",
    "read 0 0",
    "write 0 0",
    "sleep 1",
    "open x",
    "help",
    "help read",
    "help map",
    "help nope",
    "close",
    "length",
)


def test_raw_script_matches_qemu_io(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    q, b = twin_images(tmp_path, qemu_img, "raw", "4M")
    out_q = run(qemu_io, ["-f", "raw", *RAW_SCRIPT, q])
    out_b = run(BLOCKD_IO, ["-f", "raw", *RAW_SCRIPT, b])
    assert out_b == out_q
    assert out_q[2] == 1
    assert Path(q).read_bytes() == Path(b).read_bytes()


QCOW2_SCRIPT = cmds(
    "write -P 0x41 0 64k",
    "read -P 0x41 0 64k",
    "map",
    "alloc 0 1M",
    "write -z 1M 64k",
    "write -z -u 2M 64k",
    "write -c 3M 64k",
    "write -P 5 100k 3k",
    "map",
    "discard 0 64k",
    "map",
    "alloc 0 4M",
    "read -v 100k 32",
    "read -P 0 1M 64k",
    "info",
    "truncate 8M",
    "length",
    "read -P 0 7M 1M",
    "write -c 0 512",
    "flush",
)


@pytest.mark.parametrize("cache", ["writethrough", "none"])
def test_qcow2_script_matches_qemu_io(tmp_path: Path, qemu_io: str, qemu_img: str,
                                      cache: str) -> None:
    q, b = twin_images(tmp_path, qemu_img, "qcow2", "4M")
    out_q = run(qemu_io, ["-t", cache, "-f", "qcow2", *QCOW2_SCRIPT, q])
    out_b = run(BLOCKD_IO, ["-t", cache, "-f", "qcow2", *QCOW2_SCRIPT, b])
    assert out_b == out_q
    r = subprocess.run([qemu_img, "compare", q, b], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    r = subprocess.run([qemu_img, "check", b], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_qcow2_backing_chain(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    subprocess.run([qemu_img, "create", "-f", "qcow2", str(tmp_path / "base.qcow2"), "4M"],
                   check=True, capture_output=True)
    subprocess.run([qemu_io, "-c", "write -P 1 0 128k", str(tmp_path / "base.qcow2")],
                   check=True, capture_output=True)
    subprocess.run([qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    str(tmp_path / "top.qcow2")], check=True, capture_output=True)
    script = cmds("read -P 1 0 128k", "map", "alloc 0 128k", "write -P 2 64k 4k",
                  "read -P 1 0 64k", "read -P 2 64k 4k", "map", "discard 64k 64k",
                  "read -P 0 64k 4k", "map")
    shutil.copy(tmp_path / "top.qcow2", tmp_path / "top0.qcow2")
    q = compare(qemu_io, ["-r", *script[:6], "top.qcow2"], cwd=tmp_path)
    assert "Pattern verification failed" not in q[0]
    shutil.copy(tmp_path / "top0.qcow2", tmp_path / "top.qcow2")
    out_q = run(qemu_io, [*script, "top.qcow2"], cwd=tmp_path)
    shutil.copy(tmp_path / "top0.qcow2", tmp_path / "top.qcow2")
    out_b = run(BLOCKD_IO, [*script, "top.qcow2"], cwd=tmp_path)
    assert out_b == out_q
    # a missing backing file: QEMU's nested message
    (tmp_path / "base.qcow2").rename(tmp_path / "gone.qcow2")
    compare(qemu_io, [*cmds("read 0 1"), "top.qcow2"], cwd=tmp_path)
    compare(qemu_io, [*cmds("read 0 1"), str(tmp_path / "top.qcow2")])


def test_cli_errors_match(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    q, _ = twin_images(tmp_path, qemu_img, "raw", "1M")
    (tmp_path / "t.txt").write_bytes(b"hello")
    cases: list[list[str]] = [
        cmds("read 0 1"),
        cmds("help"),
        ["-h"],
        ["-Z"],
        ["--bogus"],
        [q, q],
        [*cmds("read 0 1"), str(tmp_path / "missing")],
        ["-f", "qcow2", *cmds("read 0 1"), q],
        ["-U", *cmds("read 0 1"), q],
        ["-U", "-r", *cmds("read 0 1", "write 0 1", "truncate 1"), q],
        ["-t", "bogus", *cmds("read 0 1"), q],
        ["-d", "bogus", *cmds("read 0 1"), q],
        ["-i", "bogus", *cmds("read 0 1"), q],
        ["-i", "native", *cmds("read 0 1"), q],
        ["-i", "io_uring", *cmds("read 0 1"), q],
        ["-f", "raw", "-n", *cmds("write -P 7 1 3", "read -v 0 5"), q],
        ["-f", "raw", "-t", "writethrough", *cmds("write 0 512"), q],
        ["-f", "raw", "-d", "ignore", *cmds("discard 0 512"), q],
        ["--image-opts", *cmds("read 0 1", "length"), f"driver=raw,file.filename={q}"],
        ["--image-opts", "-f", "raw", *cmds("read 0 1"), f"driver=raw,file.filename={q}"],
        ["-f", "raw", *cmds("quit", "read x 1"), q],
        ["-f", "raw", *cmds("read x 1", "quit"), q],
        cmds("open -r -o driver=raw " + q, "length", "open " + q, "close", "close"),
        cmds("open -f raw " + q),
        # -s: writes land in a temporary qcow2 overlay, the image stays untouched
        ["-s", "-f", "raw", *cmds("write -P 7 0 512", "read -v 0 16", "map", "info"), q],
        cmds("open -s -o driver=raw " + q, "write -P 7 0 512", "read -P 7 0 512"),
        ["-f", "raw", *cmds("read -P 0 0 512"), q],
        ["-f", "raw", *cmds("write -s " + str(tmp_path / "t.txt") + " 0 12", "read -v 0 16"),
         q],
    ]
    for args in cases:
        compare(qemu_io, args, cwd=tmp_path)
    # the probing warning for a raw image opened read-write without -f
    compare(qemu_io, [*cmds("read 0 1"), str(tmp_path / "t.txt")])


def test_interactive_stdin(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    q, _ = twin_images(tmp_path, qemu_img, "raw", "1M")
    compare(qemu_io, ["-f", "raw", q], stdin="write 0 512\nread x 1\n\nread -v 0 16\nlength\n")
    compare(qemu_io, ["-f", "raw", q], stdin="length\nquit\nlength\n")


def test_lock_conflicts_with_running_qemu_io(tmp_path: Path, qemu_io: str,
                                             qemu_img: str) -> None:
    img = str(tmp_path / "l.qcow2")
    subprocess.run([qemu_img, "create", "-f", "qcow2", img, "1M"], check=True,
                   capture_output=True)
    for holder_tool in (qemu_io, BLOCKD_IO):
        holder = subprocess.Popen([holder_tool, "-f", "qcow2", img], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert holder.stdout is not None
            holder.stdout.read(len(Path(holder_tool).name) + 2)  # the prompt: image open
            for tool in (qemu_io, BLOCKD_IO):
                _out, err, rc = run(tool, ["-f", "qcow2", *cmds("write 0 512"), img])
                assert rc == 1
                assert err == (f"PROG: can't open device {img}: Failed to get \"write\" lock\n"
                               f"Is another process using the image [{img}]?\n")
                _out, err, rc = run(tool, ["-r", "-f", "qcow2", *cmds("read 0 512"), img])
                assert err.startswith(
                    f"PROG: can't open device {img}: Failed to get shared \"write\" lock\n")
                _out, err, rc = run(tool, ["-U", "-r", "-f", "qcow2", *cmds("read 0 512"), img])
                assert rc == 0 and err == ""
        finally:
            holder.communicate(b"quit\n", timeout=30)


async def test_run_qemu_io_command_api(tmp_path: Path) -> None:
    img = tmp_path / "api.raw"
    img.write_bytes(bytes(1 << 20))
    drv = await open_image(str(img), "raw", read_only=False)
    try:
        out, err = io.StringIO(), io.StringIO()
        await run_qemu_io_command(drv, "write -P 0x11 0 4k", out, err)
        await run_qemu_io_command(drv, "read -P 0x11 0 4k", out, err)
        await run_qemu_io_command(drv, "open x", out, err)
        lines = out.getvalue().splitlines()
        assert lines[0] == "wrote 4096/4096 bytes at offset 0"
        assert lines[1].startswith("4 KiB, 1 ops; ")
        assert lines[2] == "read 4096/4096 bytes at offset 0"
        assert err.getvalue() == 'command "open" not found\n'
    finally:
        await close_image(drv)
    assert img.read_bytes()[:4096] == b"\x11" * 4096


def test_compressed_cluster_reuse_keeps_data(tmp_path: Path, qemu_img: str) -> None:
    """A sequence on which QEMU 7.2's own qemu-io corrupts its image (found by the
    differential test: a freed compressed cluster's space is reused while still
    referenced, and stale bytes show through).  blockd must get it right."""
    img = str(tmp_path / "c.qcow2")
    subprocess.run([qemu_img, "create", "-f", "qcow2", img, "4M"], check=True,
                   capture_output=True)
    script = cmds("write -P 0 0 512", "write -c -P 0 196608 65536", "write -P 0 0 512",
                  "write -P 0 196608 65536", "write -P 0 0 66048",
                  "write -c -P 0 131072 65536", "read -q -P 0 0 4M")
    out, err, rc = run(BLOCKD_IO, ["-f", "qcow2", *script, img])
    assert rc == 0 and err == "" and "failed" not in out
    r = subprocess.run([qemu_img, "check", img], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_copy_on_read(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    base = tmp_path / "cb.qcow2"
    subprocess.run([qemu_img, "create", "-f", "qcow2", str(base), "4M"], check=True,
                   capture_output=True)
    subprocess.run([qemu_io, *cmds("write -P 1 0 100k", "write -P 2 1M 4k"), str(base)],
                   check=True, capture_output=True)
    script = cmds("read -P 1 10k 4k", "map", "read -P 0 200k 4k", "map", "read -v 1M 16",
                  "map", "readv 3M 512", "map")
    outs = []
    for tool in (qemu_io, BLOCKD_IO):
        top = tmp_path / "ct.qcow2"
        top.unlink(missing_ok=True)
        subprocess.run([qemu_img, "create", "-f", "qcow2", "-b", "cb.qcow2", "-F", "qcow2",
                        str(top)], check=True, capture_output=True)
        outs.append(run(tool, ["-C", *script, str(top)]))
        r = subprocess.run([qemu_img, "check", str(top)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
    assert outs[1] == outs[0]
    compare(qemu_io, ["-C", "-r", *cmds("read 0 1"), str(tmp_path / "ct.qcow2")])


def test_info_format_specific_dump(tmp_path: Path, qemu_io: str, qemu_img: str) -> None:
    """'info' prints ImageInfoSpecific in QDict (hash) order, lists as [i]."""
    img = str(tmp_path / "bm.qcow2")
    subprocess.run([qemu_img, "create", "-f", "qcow2", img, "4M"], check=True,
                   capture_output=True)
    for args in (["--add", img, "b0"], ["--add", "--granularity", "128k", img, "b1"],
                 ["--disable", img, "b0"]):
        subprocess.run([qemu_img, "bitmap", *args], check=True, capture_output=True)
    compare(qemu_io, ["-r", *cmds("info"), img])


async def test_run_qemu_io_command_routes_like_hmp(tmp_path: Path) -> None:
    """Measured on qemu-system-x86_64 7.2: error_report() text is the HMP reply,
    printf output goes to stdout, fprintf(stderr) to stderr."""
    img = tmp_path / "ro.raw"
    img.write_bytes(bytes(1 << 20))
    drv = await open_image(str(img), "raw")
    try:
        out, err, mon = io.StringIO(), io.StringIO(), io.StringIO()
        for line in ("write 0 512", "read -v 0 16", "bogus", "read x 1"):
            await run_qemu_io_command(drv, line, out, err, monitor=mon)
        assert mon.getvalue() == "Block node is read-only\n"
        assert err.getvalue() == 'command "bogus" not found\n'
        lines = out.getvalue().splitlines()
        assert lines[0] == "00000000:  " + "00 " * 16 + " ................"
        assert lines[1] == "read 16/16 bytes at offset 0"
        assert lines[3] == (
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x"
        )
    finally:
        await close_image(drv)
