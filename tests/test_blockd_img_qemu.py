"""blockd-img against the real qemu-img 7.2, command by command.

Each case runs the same command lines with qemu-img in one directory and with
blockd-img (in process, as program "qemu-img") in a twin directory holding
byte-identical copies of the same images, and requires the same stdout, stderr
and exit status.  Only the host allocation ("disk size" / "actual-size") is
ignored, since it depends on how each implementation lays out the file.  Images
written by blockd-img must then pass ``qemu-img check`` and ``qemu-img compare``
against the ones qemu-img wrote.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockd.tools.img import run
from blockd.tools.img_cmds.common import Console
from tests.conftest import require_tool

pytestmark = pytest.mark.qemu


@dataclass(frozen=True)
class Result:
    out: str
    err: str
    rc: int


_ALLOC = re.compile(r'^(disk size: .*|\s*"actual-size": \d+,?)\n', re.M)


def normalise(r: Result) -> Result:
    return Result(_ALLOC.sub("", r.out), r.err, r.rc)


def run_qemu(qemu_img: str, cwd: Path, args: list[str]) -> Result:
    # Bytes, not text=True: universal newlines would turn the progress bar's \r into \n.
    p = subprocess.run([qemu_img, *args], cwd=cwd, capture_output=True)
    return Result(
        p.stdout.decode("utf-8", "surrogateescape"),
        p.stderr.decode("utf-8", "surrogateescape"),
        p.returncode,
    )


def run_blockd(cwd: Path, args: list[str]) -> Result:
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = run(list(args), Console(prog="qemu-img"))
    finally:
        os.chdir(old)
    return Result(out.getvalue(), err.getvalue(), rc)


def _qemu_io(cwd: Path, fmt: str, name: str, *cmds: str) -> None:
    qemu_io = require_tool("qemu-io")
    argv = [qemu_io, "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    subprocess.run([*argv, name], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A set of images made by real qemu-img/qemu-io, copied into every test."""
    qemu_img = require_tool("qemu-img")
    d = tmp_path_factory.mktemp("img-template")

    def img(*args: str) -> None:
        subprocess.run([qemu_img, *args], cwd=d, check=True, capture_output=True)

    img("create", "-q", "-f", "qcow2", "base.qcow2", "4M")
    _qemu_io(d, "qcow2", "base.qcow2", "write -P 1 0 64k", "write -z 128k 64k", "write -P 2 1M 4k")
    img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    _qemu_io(d, "qcow2", "top.qcow2", "write -P 3 64k 64k", "write -P 4 2M 64k")
    img("create", "-q", "-f", "qcow2", "empty.qcow2", "4M")
    img("create", "-q", "-f", "qcow2", "big.qcow2", "8M")
    img("create", "-q", "-f", "qcow2", "newbase.qcow2", "4M")
    _qemu_io(d, "qcow2", "newbase.qcow2", "write -P 1 0 64k", "write -P 9 3M 64k")
    img("create", "-q", "-f", "raw", "data.raw", "4M")
    _qemu_io(d, "raw", "data.raw", "write -P 5 0 4k")
    img("convert", "-O", "raw", "base.qcow2", "base.raw")
    img(
        "create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", "orphan.qcow2", "1M"
    )
    shutil.copyfile(d / "base.qcow2", d / "leak.qcow2")
    with open(d / "leak.qcow2", "r+b") as f:
        # Refcount of the refcount block (cluster 2) raised to 2: one leaked reference.
        f.seek(0x20000 + 2 * 2)
        f.write(struct.pack(">H", 2))
    (d / "five.raw").write_bytes(b"hello")
    img("create", "-q", "-f", "qcow2", "snap.qcow2", "4M")
    _qemu_io(d, "qcow2", "snap.qcow2", "write -P 7 0 64k")
    img("snapshot", "-c", "first", "snap.qcow2")
    _qemu_io(d, "qcow2", "snap.qcow2", "write -P 8 0 64k")
    img("snapshot", "-c", "a rather long snapshot name", "snap.qcow2")
    img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "dirty.qcow2", "4M")
    # Killed with the image open: dirty flag set, refcounts not written (lazy).
    subprocess.run(
        [require_tool("qemu-io"), "-c", "write 0 64k", "-c", "sigraise 9", "dirty.qcow2"],
        cwd=d,
        capture_output=True,
    )
    shutil.copyfile(d / "base.qcow2", d / "flagged.qcow2")
    with open(d / "flagged.qcow2", "r+b") as f:
        # The "corrupt" incompatible feature bit, as QEMU sets it on a detected error.
        f.seek(72)
        (features,) = struct.unpack(">Q", f.read(8))
        f.seek(72)
        f.write(struct.pack(">Q", features | 2))
    shutil.copyfile(d / "empty.qcow2", d / "corrupt.qcow2")
    _qemu_io(d, "qcow2", "corrupt.qcow2", "write -P 7 0 64k")
    with open(d / "corrupt.qcow2", "r+b") as f:
        # The data cluster (cluster 5) loses its reference count: a corruption.
        f.seek(0x20000 + 2 * 5)
        f.write(struct.pack(">H", 0))
    return d


@dataclass
class Twin:
    q: Path
    b: Path
    qemu_img: str

    def same(self, args: list[str]) -> Result:
        want = normalise(run_qemu(self.qemu_img, self.q, args))
        got = normalise(run_blockd(self.b, args))
        assert got == want, f"blockd-img {' '.join(args)}"
        return got

    def verify(self, name: str) -> None:
        """An image blockd-img wrote is consistent and equals qemu-img's."""
        if not (self.q / name).exists():
            assert not (self.b / name).exists()
            return
        chk = run_qemu(self.qemu_img, self.b, ["check", "-q", name])
        assert chk.rc in (0, 63), chk.err
        cmp = run_qemu(self.qemu_img, self.b, ["compare", "-U", name, str(self.q / name)])
        assert cmp.rc == 0, cmp.out + cmp.err


@pytest.fixture
def twin(template: Path, tmp_path: Path, qemu_img: str) -> Iterator[Twin]:
    q, b = tmp_path / "q", tmp_path / "b"
    for d in (q, b):
        d.mkdir()
        for f in template.iterdir():
            # copyfile writes every byte: both copies have the same (full) allocation.
            shutil.copyfile(f, d / f.name)
    yield Twin(q, b, qemu_img)


def _case(*lines: str) -> list[list[str]]:
    return [line.split(" ") if line else [] for line in lines]


GENERAL = {
    "no-args": _case(""),
    "unknown-command": _case("foo"),
    "version-and-help-exit-0": _case("-T", "--trace"),
}

CREATE = {
    "qcow2-default": _case("create -f qcow2 x.qcow2 1G", "info x.qcow2"),
    "raw-default": _case("create x.raw 1M", "info --output=json x.raw"),
    "sizes": _case(
        "create x.raw 1.5k",
        "create y.raw 0x10",
        "create z.raw 1b",
        "create w.raw 5",
        "info w.raw",
        "create v.raw 0x1k",
    ),
    "size-errors": _case(
        "create x.raw 1Z",
        "create x.raw 9E",
        "create x.raw 1.5",
        "create x.raw 1e3",
        "create x.raw 1 extra",
        "create x.raw",
        "create",
    ),
    "getopt-errors": _case(
        "create -f", "create -z", "create --bogus", "create -qz x 1M", "create x.raw -1"
    ),
    "backing": _case(
        "create -f qcow2 -b base.qcow2 -F qcow2 o.qcow2",
        "info o.qcow2",
        "create -f qcow2 -b base.qcow2 o2.qcow2",
        "create -f qcow2 -b nope.qcow2 -F qcow2 o3.qcow2",
        "create -f qcow2 -u -b nope.qcow2 -F qcow2 o4.qcow2 5M",
        "create -f qcow2 -u -b nope.qcow2 o5.qcow2 5M",
        "create -f qcow2 -b base.qcow2 -F raw o6.qcow2",
        "create -f qcow2 -b five.raw -F raw o7.qcow2",
        "create -f qcow2 -F raw o8.qcow2 1M",
        "create -f qcow2 -b o9.qcow2 -F qcow2 o9.qcow2",
        "create -f raw -b base.qcow2 o10.raw 1M",
        "info --output=json o7.qcow2",
    ),
    "qcow2-options": _case(
        "create -f qcow2 -o cluster_size=1000 a.qcow2 1M",
        "create -f qcow2 -o foo=bar b.qcow2 1M",
        "create -f qcow2 -o compat=0.10,lazy_refcounts=on c.qcow2 1M",
        "create -f qcow2 -o compat=0.10 d.qcow2 1M",
        "create -f qcow2 -o ,, e.qcow2 1M",
        "create -f qcow2 -o preallocation=metadata f.qcow2 1M",
        "create -f qcow2 -o refcount_bits=3 g.qcow2 1M",
        "create -f qcow2 -o size=2M h.qcow2",
        "create -f qcow2 -o size=2M i.qcow2 1M",
        "create -f qcow2 -o cluster_size=2M,refcount_bits=64,lazy_refcounts=on j.qcow2 1M",
        "create -f qcow2 -o compat=v3,cluster_size=4k -o lazy_refcounts=yes k.qcow2 1M",
        "create -f qcow2 -o compat=1.2 l.qcow2 1M",
        "create -f qcow2 -o lazy_refcounts=maybe m.qcow2 1M",
        "create -f qcow2 -o refcount_bits=abc n.qcow2 1M",
        "create -f qcow2 -o cluster_size=abc o.qcow2 1M",
        "create -f qcow2 -o preallocation=bogus p.qcow2 1M",
        "create -f qcow2 -o preallocation=falloc q.qcow2 1M",
        "create -f qcow2 -o compat=0.10,refcount_bits=8 r.qcow2 1M",
        "create -f vmdkx s.img 1M",
        "create -q -f qcow2 t.qcow2 1M",
        "info --output=json j.qcow2",
        "info --output=json d.qcow2",
        "info k.qcow2",
    ),
    "raw-options": _case(
        "create -f raw -o preallocation=full a.raw 1M",
        "create -f raw -o preallocation=falloc b.raw 1M",
        "create -f raw -o preallocation=metadata c.raw 1M",
        "create -f raw -o preallocation=bogus d.raw 1M",
        "create -f raw -o help",
        "create -f raw -o help x.raw",
    ),
}
CREATE_FILES = ["x.qcow2", "x.raw", "o.qcow2", "o6.qcow2", "o7.qcow2", "d.qcow2", "f.qcow2"]
CREATE_FILES += ["h.qcow2", "j.qcow2", "k.qcow2", "q.qcow2", "t.qcow2", "a.raw", "b.raw"]

INFO = {
    "human": _case("info base.qcow2", "info top.qcow2", "info data.raw", "info -f raw five.raw"),
    "json": _case(
        "info --output=json base.qcow2",
        "info --output=json top.qcow2",
        "info --output json data.raw",
        "info --out=json -U leak.qcow2",
    ),
    "chain": _case(
        "info --backing-chain top.qcow2",
        "info --backing-chain --output=json top.qcow2",
        "info --backing-chain orphan.qcow2",
        "info orphan.qcow2",
    ),
    "snapshots": _case("info snap.qcow2", "info --output=json snap.qcow2", "map snap.qcow2"),
    "image-opts": _case(
        'info json:{"driver":"qcow2","file":{"driver":"file","filename":"top.qcow2"}}',
        'info --output=json --backing-chain json:{"file":{"filename":"top.qcow2"}}',
        "info --image-opts driver=qcow2,file.filename=top.qcow2",
        "info --image-opts top.qcow2",
        "info --image-opts -f qcow2 file.filename=top.qcow2",
        "info --image-opts driver=qcow2,file.filename=nope",
        "check --image-opts --output=json driver=qcow2,file.filename=top.qcow2",
        "map --image-opts file.filename=top.qcow2",
        "compare --image-opts file.filename=top.qcow2 driver=qcow2,file.filename=top.qcow2",
        "convert --image-opts -O raw file.filename=top.qcow2 x.raw",
        "resize --image-opts driver=raw,file.filename=x.raw +1M",
        "compare -f raw x.raw top.qcow2",
    ),
    "errors": _case(
        "info",
        "info nope",
        "info -f qcow2 data.raw",
        "info --output=xml base.qcow2",
        "info base.qcow2 top.qcow2",
        "info -f vmdkx base.qcow2",
    ),
}

CHECK = {
    "clean": _case("check base.qcow2", "check --output=json top.qcow2", "check -q base.qcow2"),
    "leaks": _case(
        "check leak.qcow2", "check --output=json leak.qcow2", "check -r leaks leak.qcow2"
    ),
    "repair-json": _case("check -r all --output=json leak.qcow2", "check leak.qcow2"),
    "unsupported": _case(
        "check data.raw", "check --output=json -f raw data.raw", "check -r all data.raw"
    ),
    "errors": _case(
        "check -r bogus base.qcow2",
        "check nope",
        "check",
        "check orphan.qcow2",
        "check -r all -U base.qcow2",
    ),
    "corrupt": _case(
        "check corrupt.qcow2",
        "check --output=json corrupt.qcow2",
        "check -r all corrupt.qcow2",
        "check --output=json corrupt.qcow2",
    ),
    "snapshots": _case("check snap.qcow2", "check -r all snap.qcow2", "info snap.qcow2"),
    "corrupt-bit": _case(
        "info flagged.qcow2",
        "check flagged.qcow2",
        "resize flagged.qcow2 +1M",
        "check -r all flagged.qcow2",
        "info --output=json flagged.qcow2",
    ),
    "dirty": _case(
        "info dirty.qcow2",
        "check dirty.qcow2",
        "check -r leaks dirty.qcow2",
        "check -r all --output=json dirty.qcow2",
        "info --output=json dirty.qcow2",
    ),
}

MAP = {
    "human": _case("map base.qcow2", "map top.qcow2", "map -f raw data.raw", "map -f raw five.raw"),
    "json": _case(
        "map --output=json base.qcow2",
        "map --output=json top.qcow2",
        "map --output=json data.raw",
        "map --output=json --start-offset=64k --max-length=1M top.qcow2",
    ),
    "errors": _case("map", "map nope", "map -f qcow2 data.raw", "map --output=xml data.raw"),
}

COMPARE = {
    "identical": _case(
        "compare base.qcow2 base.raw",
        "compare -f qcow2 -F raw base.qcow2 base.raw",
        "compare -p empty.qcow2 big.qcow2",
        "compare -p top.qcow2 top.qcow2",
    ),
    "different": _case(
        "compare base.qcow2 empty.qcow2",
        "compare top.qcow2 base.qcow2",
        "compare big.qcow2 base.qcow2",
        "compare -q base.qcow2 empty.qcow2",
        "compare -f raw base.qcow2 top.qcow2",
    ),
    "strict": _case(
        "compare -s base.qcow2 base.raw",
        "compare -s empty.qcow2 big.qcow2",
        "compare -s base.qcow2 base.qcow2",
    ),
    "errors": _case("compare base.qcow2", "compare base.qcow2 nope", "compare nope base.qcow2"),
}

RESIZE = {
    "qcow2": _case(
        "resize base.qcow2 +1M",
        "resize base.qcow2 -1M",
        "resize --shrink base.qcow2 -- -1M",
        "resize base.qcow2 1M",
        "resize --shrink base.qcow2 4M",
        "resize base.qcow2 +0",
        "info base.qcow2",
    ),
    "raw": _case(
        "resize data.raw 2M",
        "resize --shrink data.raw 2M",
        "resize data.raw +1.5k",
        "resize -f raw data.raw 8M",
        "resize --preallocation=full -f raw data.raw +1M",
        "resize -q -f raw data.raw -1",
        "resize --shrink -q -f raw data.raw -1",
        "info -f raw data.raw",
    ),
    "errors": _case(
        "resize base.qcow2 abc",
        "resize base.qcow2",
        "resize base.qcow2 1 2",
        "resize -f qcow2 data.raw 8M",
        "resize -f raw data.raw 9E",
        "resize --preallocation=bogus data.raw +1M",
        "resize --preallocation=full base.qcow2 1M",
    ),
}
RESIZE_FILES = ["base.qcow2", "data.raw"]

REBASE = {
    "unsafe": _case(
        "rebase -u -b newbase.qcow2 -F qcow2 top.qcow2",
        "info top.qcow2",
        "rebase -u -b '' top.qcow2",
        "info top.qcow2",
    ),
    "safe": _case(
        "rebase -b newbase.qcow2 -F qcow2 top.qcow2",
        "info top.qcow2",
        "compare top.qcow2 base.raw",
    ),
    "safe-to-none": _case("rebase -p -b  top.qcow2", "info --output=json top.qcow2"),
    "errors": _case(
        "rebase top.qcow2",
        "rebase -b base.qcow2 -F qcow2",
        "rebase -b nope -F qcow2 top.qcow2",
        "rebase -u -b nope top.qcow2",
        "rebase -b newbase.qcow2 -F vmdkx top.qcow2",
        "rebase -f raw -u -b base.qcow2 -F qcow2 data.raw",
        "rebase -b base.qcow2 orphan.qcow2",
    ),
}
REBASE_FILES = ["top.qcow2"]

CONVERT = {
    "basic": _case(
        "convert base.qcow2 a.raw",
        "convert -O qcow2 base.qcow2 b.qcow2",
        "convert -p -O qcow2 top.qcow2 c.qcow2",
        "convert -O qcow2 -o cluster_size=4k,lazy_refcounts=on top.qcow2 d.qcow2",
        "convert -p -O raw -f raw data.raw e.raw",
        "convert -S 0 -O qcow2 base.qcow2 f.qcow2",
        "convert -O qcow2 data.raw base.qcow2 g.qcow2",
        "info --output=json g.qcow2",
    ),
    "compressed": _case(
        "convert -c -O qcow2 top.qcow2 h.qcow2", "convert -c -O raw top.qcow2 i.raw"
    ),
    "backing": _case(
        "convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 j.qcow2",
        "info j.qcow2",
        "map --output=json j.qcow2",
        "convert -O qcow2 -B base.qcow2 top.qcow2 k.qcow2",
        "convert -O raw -B base.qcow2 -F qcow2 top.qcow2 l.raw",
        "convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 base.qcow2 m.qcow2",
    ),
    "existing-target": _case(
        "convert -n -O qcow2 base.qcow2 empty.qcow2",
        "convert -n -O qcow2 base.qcow2 big.qcow2",
        "convert -n -O qcow2 big.qcow2 base.qcow2",
        "convert -n -o cluster_size=4k -O qcow2 base.qcow2 big.qcow2",
        "compare empty.qcow2 base.qcow2",
    ),
    "errors": _case(
        "convert -O qcow2 base.qcow2",
        "convert -O qcow2 nope x.qcow2",
        "convert -O vmdkx base.qcow2 x",
        "convert -O qcow2 -o cluster_size=1000 base.qcow2 x.qcow2",
        "convert -O qcow2 -c -o preallocation=full base.qcow2 x.qcow2",
        "convert -S 100 -O qcow2 base.qcow2 x.qcow2",
        "convert -m 0 -O qcow2 base.qcow2 x.qcow2",
        "convert -O qcow2 -o foo=1 base.qcow2 x.qcow2",
        "convert -o help",
    ),
    "cache-modes": _case(
        "convert -t bogus -O raw base.qcow2 x.raw",
        "convert -T bogus -O raw base.qcow2 y.raw",
        "convert -t none -T directsync -O qcow2 top.qcow2 z.qcow2",
        "check -T bogus base.qcow2",
        "check -T none base.qcow2",
        "compare -T bogus base.qcow2 base.qcow2",
        "compare -T none z.qcow2 top.qcow2",
        "rebase -t bogus -u -b  top.qcow2",
        "rebase -T bogus -u -b  top.qcow2",
        "rebase -t none -T none -b newbase.qcow2 -F qcow2 top.qcow2",
        "compare top.qcow2 z.qcow2",
    ),
}
CONVERT_FILES = ["a.raw", "b.qcow2", "c.qcow2", "d.qcow2", "e.raw", "f.qcow2", "g.qcow2"]
CONVERT_FILES += ["h.qcow2", "j.qcow2", "m.qcow2", "empty.qcow2", "big.qcow2"]


def _run_case(twin: Twin, lines: list[list[str]], files: list[str]) -> None:
    for args in lines:
        twin.same([a.replace("''", "") for a in args])
    for name in files:
        twin.verify(name)


@pytest.mark.parametrize("name", sorted(GENERAL))
def test_general(twin: Twin, name: str) -> None:
    _run_case(twin, GENERAL[name], [])


@pytest.mark.parametrize("name", sorted(CREATE))
def test_create(twin: Twin, name: str) -> None:
    _run_case(twin, CREATE[name], CREATE_FILES)


@pytest.mark.parametrize("name", sorted(INFO))
def test_info(twin: Twin, name: str) -> None:
    _run_case(twin, INFO[name], [])


@pytest.mark.parametrize("name", sorted(CHECK))
def test_check(twin: Twin, name: str) -> None:
    files = {
        "leaks": ["leak.qcow2"],
        "repair-json": ["leak.qcow2"],
        "corrupt": ["corrupt.qcow2"],
        "dirty": ["dirty.qcow2"],
        "corrupt-bit": ["flagged.qcow2"],
    }
    _run_case(twin, CHECK[name], files.get(name, []))


def test_locked_images(twin: Twin) -> None:
    """An image held open read-write by qemu-io: the same lock errors, and -U."""
    qemu_io = require_tool("qemu-io")
    holders = [
        subprocess.Popen(
            [qemu_io, "-f", "qcow2", str(d / "base.qcow2")],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for d in (twin.q, twin.b)
    ]
    try:
        for d in (twin.q, twin.b):
            for _ in range(200):  # until qemu-io holds its locks
                probe = run_qemu(twin.qemu_img, d, ["info", "base.qcow2"])
                if probe.rc == 1:
                    break
                time.sleep(0.01)
        for line in (
            "info base.qcow2",
            "info -U base.qcow2",
            "check base.qcow2",
            "check -U base.qcow2",
            "map -U base.qcow2",
            "compare -U base.qcow2 base.raw",
            "resize base.qcow2 +1M",
            "rebase -u -b  base.qcow2",
            "convert -U -O raw base.qcow2 x.raw",
            "create -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2",
            # Creating over an image in use must be refused, not truncate it.
            "create -f qcow2 base.qcow2 1M",
            "create -f raw base.qcow2 1M",
            "convert -O raw five.raw base.qcow2",
            "info -U base.qcow2",
        ):
            twin.same(line.split(" "))
    finally:
        for h in holders:
            assert h.stdin is not None
            h.stdin.close()
            h.wait()


def test_create_option_help_lists_a_subset_of_qemus(twin: Twin) -> None:
    """blockd-img lists only the qcow2 options it implements, with QEMU's lines."""
    want = run_qemu(twin.qemu_img, twin.q, ["create", "-f", "qcow2", "-o", "help"])
    got = run_blockd(twin.b, ["create", "-f", "qcow2", "-o", "help"])
    assert got.rc == want.rc == 0
    assert set(got.out.splitlines()) <= set(want.out.splitlines())
    assert got.out.startswith("Supported qcow2 options:\n")
    assert got.out.endswith(want.out[want.out.index("\nThe protocol level") :])


@pytest.mark.parametrize("name", sorted(MAP))
def test_map(twin: Twin, name: str) -> None:
    _run_case(twin, MAP[name], [])


@pytest.mark.parametrize("name", sorted(COMPARE))
def test_compare(twin: Twin, name: str) -> None:
    _run_case(twin, COMPARE[name], [])


@pytest.mark.parametrize("name", sorted(RESIZE))
def test_resize(twin: Twin, name: str) -> None:
    _run_case(twin, RESIZE[name], RESIZE_FILES)


@pytest.mark.parametrize("name", sorted(REBASE))
def test_rebase(twin: Twin, name: str) -> None:
    _run_case(twin, REBASE[name], REBASE_FILES)


@pytest.mark.parametrize("name", sorted(CONVERT))
def test_convert(twin: Twin, name: str) -> None:
    _run_case(twin, CONVERT[name], CONVERT_FILES)


def test_info_json_matches_on_images_blockd_img_made(twin: Twin) -> None:
    """Field for field (actual-size aside) on images created by blockd-img itself."""
    for line in (
        "create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on n1.qcow2 3M",
        "create -q -f qcow2 -b n1.qcow2 -F qcow2 n2.qcow2",
        "create -q -f qcow2 -o compat=0.10 n3.qcow2 1G",
    ):
        assert run_blockd(twin.b, line.split(" ")).rc == 0
    for name in ("n1.qcow2", "n2.qcow2", "n3.qcow2"):
        for extra in ([], ["--backing-chain"]):
            args = ["info", "--output=json", *extra, name]
            want = normalise(run_qemu(twin.qemu_img, twin.b, args))
            assert normalise(run_blockd(twin.b, args)) == want
        assert run_qemu(twin.qemu_img, twin.b, ["check", name]).rc == 0


def test_console_script_uses_its_own_name(tmp_path: Path) -> None:
    beside = Path(sys.executable).parent / "blockd-img"
    exe = str(beside) if beside.exists() else shutil.which("blockd-img")
    if exe is None:
        pytest.skip("blockd-img console script not installed")
    p = subprocess.run([exe, "info"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr == (
        "blockd-img: Expecting one image file name\nTry 'qemu-img --help' for more information\n"
    )
    q = subprocess.run([exe, "create", "-q", "x.raw", "1M"], capture_output=True, cwd=tmp_path)
    assert q.returncode == 0 and (tmp_path / "x.raw").stat().st_size == 1 << 20


def test_metadata_preallocated_images(twin: Twin) -> None:
    """preallocation=metadata: data clusters that are holes on the host read as
    zeros (QEMU's metadata-preallocation detection and BDRV_BLOCK_RECURSE)."""
    for d in (twin.q, twin.b):
        create = "create -q -f qcow2 -o preallocation=metadata pm.qcow2 4M"
        subprocess.run([twin.qemu_img, *create.split(" ")], cwd=d, check=True)
        _qemu_io(d, "qcow2", "pm.qcow2", "write -P 1 64k 64k")
    for line in (
        "map pm.qcow2",
        "map --output=json pm.qcow2",
        "convert -p -O qcow2 pm.qcow2 c.qcow2",
        "convert -p -O raw pm.qcow2 c.raw",
        "compare -s pm.qcow2 c.qcow2",
        "compare pm.qcow2 c.raw",
        "info --output=json pm.qcow2",
        "check pm.qcow2",
    ):
        twin.same(line.split(" "))
    twin.verify("c.qcow2")
