"""File names with a protocol prefix (``blkdebug:cfg:img``, ``null-co://``,
``file:img``): the driver the prefix names opens them, in the tools and for
backing files named by an image header, as in QEMU 7.2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from blockd.drivers.protocols import (
    filename_children,
    filename_options,
    find_protocol,
    path_has_protocol,
)
from blockd.qmp.errors import GenericError

BLOCKD_IMG = str(Path(sys.executable).parent / "blockd-img")
BLOCKD_IO = str(Path(sys.executable).parent / "blockd-io")
RULES = '[inject-error]\nevent = "read_aio"\nerrno = "5"\n'


def test_path_has_protocol() -> None:
    assert path_has_protocol("blkdebug::x")
    assert path_has_protocol("null-co://")
    assert not path_has_protocol("/a/b:c")
    assert not path_has_protocol("dir/x:y")
    assert not path_has_protocol("plain.img")


def test_find_protocol_by_prefix() -> None:
    assert find_protocol("img.qcow2").name == "file"
    assert find_protocol("file:img").name == "file"
    assert find_protocol("null-aio://").name == "null-aio"
    assert find_protocol("blkdebug:c:i").name == "blkdebug"
    assert find_protocol("blkverify:a:b").name == "blkverify"
    with pytest.raises(GenericError, match=r"^Unknown protocol 'foo'$"):
        find_protocol("foo:bar")


def test_filename_options() -> None:
    assert filename_options("/x/y.img") == {"driver": "file", "filename": "/x/y.img"}
    assert filename_options("file:y.img") == {"driver": "file", "filename": "y.img"}
    assert filename_options("null-co://") == {"driver": "null-co"}
    assert filename_options("blkdebug:/c.cfg:/i.img") == {
        "driver": "blkdebug", "config": "/c.cfg", "x-image": "/i.img"}
    assert filename_options("blkverify:/r:/t") == {
        "driver": "blkverify", "x-raw": "/r", "x-image": "/t"}
    assert filename_options('json:{"driver": "null-co", "size": 512}') == {
        "driver": "null-co", "size": 512}
    with pytest.raises(GenericError, match="only allowed filename for this driver is"):
        filename_options("null-co://x")
    with pytest.raises(GenericError, match="requires both config file and image path"):
        filename_options("blkdebug:nocolon")


def test_filename_children_declared_by_drivers() -> None:
    from blockd.drivers.base import driver_class

    assert filename_children(driver_class("blkdebug")) == {"image": "x-image"}
    assert filename_children(driver_class("blkverify")) == {"raw": "x-raw", "test": "x-image"}
    assert filename_children(driver_class("qcow2")) == {}


def _setup(d: Path, img: str) -> tuple[Path, Path]:
    d.mkdir()
    back = d / "back.img"
    subprocess.run([img, "create", "-q", "-f", "raw", str(back), "1M"], check=True)
    cfg = d / "back.cfg"
    cfg.write_text(RULES)
    return back, cfg


def _run(args: list[str], cwd: Path) -> tuple[int, str]:
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.qemu
def test_tools_with_prefixed_names_like_qemu(tmp_path: Path, qemu_img: str, qemu_io: str) -> None:
    """create/info/map/read over blkdebug backing files and bad prefixes: the
    same output and exit status as qemu-img/qemu-io 7.2."""

    def run(d: Path, img: str, io: str) -> list[tuple[int, str]]:
        back, cfg = _setup(d, qemu_img)
        name = f"blkdebug:{cfg}:{back}"
        out = [
            _run([img, "create", "-f", "qcow2", "-o",
                  f"backing_file={name},backing_fmt=raw", "top.img"], d),
            _run([img, "info", "--backing-chain", "--output=json", "top.img"], d),
            _run([img, "info", f"blkdebug::{back.name}"], d),
            _run([img, "map", "--output=json", f"blkdebug::{back.name}"], d),
            # the File column names the protocol node under the filter
            _run([img, "map", f"blkdebug::{back.name}"], d),
            _run([img, "check", "top.img"], d),
            _run([img, "compare", "top.img", str(back)], d),
            _run([io, "-c", "read 0 512", "top.img"], d),
            _run([io, "-f", "raw", "-c", "read 0 512", name], d),
            _run([img, "info", "file:back.img"], d),
            _run([img, "info", "null-co://"], d),
            _run([img, "info", "--output=json", "-f", "raw", "null-aio://"], d),
            _run([img, "info", "blkverify:back.img:back.img"], d),
        ]
        for bad in ("foo:bar", "null-co://x", "blkdebug:nocolon"):
            out.append(_run([img, "info", bad], d))
        # A relative config is relative to the working directory, not the overlay.
        out.append(_run([img, "create", "-f", "qcow2", "-b", "blkdebug:back.cfg:back.img",
                         "-F", "raw", "rel.img"], d))
        out.append(_run([io, "-c", "read 0 512", str(d / "rel.img")], d.parent))
        return [(rc, re.sub(r"qemu-img|blockd-img|qemu-io|blockd-io", "PROG",
                            text.replace(str(d), "DIR")))
                for rc, text in out]

    got = run(tmp_path / "b", BLOCKD_IMG, BLOCKD_IO)
    want = run(tmp_path / "q", qemu_img, qemu_io)
    # disk size of the top image differs with the file system's allocation
    got = [(rc, re.sub(r'"actual-size": \d+', "SIZE", t)) for rc, t in got]
    want = [(rc, re.sub(r'"actual-size": \d+', "SIZE", t)) for rc, t in want]
    assert got == want


@pytest.mark.qemu
def test_daemon_opens_prefixed_backing_like_qsd(tmp_path: Path, qemu_img: str, qsd: str) -> None:
    """An overlay whose header names ``blkdebug:<cfg>:<img>``: the implicit
    backing chain (raw over blkdebug over file) and its names as QSD shows them."""
    from tests.graph_helpers import VM

    def run(d: Path, use_qsd: bool) -> list[str]:
        back, cfg = _setup(d, qemu_img)
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b",
                        f"blkdebug:{cfg}:{back}", "-F", "raw", str(d / "top.img")],
                       check=True)
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", "null-co://",
                        "-F", "raw", str(d / "null.img"), "1M"], check=True)
        vm = VM(d, qsd=use_qsd)
        out = []
        try:
            for node in ("top", "null"):
                r = vm.qmp("blockdev-add", driver="qcow2", **{"node-name": node},
                           file={"driver": "file", "filename": str(d / f"{node}.img")})
                out.append(json.dumps(r))
            nodes = vm.qmp("query-named-block-nodes", flat=True)["return"]
            for n in nodes:
                n["image"].pop("actual-size", None)
            out.append(json.dumps(nodes))
        finally:
            vm.shutdown()
        return [re.sub(r"#block\d+", "#B", o.replace(str(d), "DIR")) for o in out]

    assert run(tmp_path / "b", False) == run(tmp_path / "q", True)
