"""Random blockdev-add / blockdev-reopen / blockdev-del sequences on an
in-process daemon: the graph stays consistent after every command, a failed
command changes nothing, and shutdown leaves no lock behind."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockd.daemon import Daemon
from blockd.drivers.locking import _conflicts
from blockd.graph.consistency import check_graph, graph_snapshot
from blockd.qapi import Schema
from blockd.qmp.errors import QMPError

IMAGES = ("hd0.img", "hd1.img", "hd2.img")
_SCHEMA: Schema | None = None


def _schema() -> Schema:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = Schema.load_default()
    return _SCHEMA


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tmpl")
    img = shutil.which("qemu-img")
    if img is None:
        pytest.skip("qemu-img not installed")
    subprocess.run([img, "create", "-q", "-f", "qcow2", str(d / "hd0.img"), "1M"], check=True)
    subprocess.run([img, "create", "-q", "-f", "qcow2", "-b", "hd0.img", "-F", "qcow2",
                    str(d / "hd1.img")], check=True, cwd=d)
    subprocess.run([img, "create", "-q", "-f", "qcow2", str(d / "hd2.img"), "1M"], check=True)
    return d


NAMES = st.sampled_from(["hd0", "hd1", "hd2", "hd0-file", "hd1-file", "hd2-file", "r", "n"])
IDX = st.integers(0, 2)
BACKING = st.one_of(st.none(), st.just("default"), NAMES)


def add_hd(i: int, backing: str | None, ro: bool, inline_file: bool) -> tuple[str, Any]:
    opts: dict[str, Any] = {"driver": "qcow2", "node-name": f"hd{i}", "read-only": ro}
    opts["file"] = ({"driver": "file", "node-name": f"hd{i}-file",
                     "filename": f"@{IMAGES[i]}"} if inline_file else f"hd{i}-file")
    if backing != "default":
        opts["backing"] = backing
    return "blockdev-add", opts


# Start from a populated graph most of the time: the three images, inline files.
PREFIX = st.lists(
    st.builds(add_hd, IDX, st.one_of(st.none(), st.just("default"), NAMES), st.booleans(),
              st.just(True)),
    min_size=0, max_size=3,
)


def _op() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    def add_file(i: int, ro: bool) -> tuple[str, Any]:
        return "blockdev-add", {"driver": "file", "node-name": f"hd{i}-file",
                                "filename": f"@{IMAGES[i]}", "read-only": ro}

    def add_raw(target: str) -> tuple[str, Any]:
        return "blockdev-add", {"driver": "raw", "node-name": "r", "file": target}

    def reopen(i: int, backing: str | None, ro: bool, file: str | None) -> tuple[str, Any]:
        opts: dict[str, Any] = {"driver": "qcow2", "node-name": f"hd{i}", "read-only": ro,
                                "file": file or f"hd{i}-file"}
        if backing != "default":
            opts["backing"] = backing
        return "blockdev-reopen", {"options": [opts]}

    def reopen2(i: int, j: int, bi: str | None, bj: str | None, ro: bool,
                bad: bool) -> tuple[str, Any]:
        first = reopen(i, bi, ro, None)[1]["options"][0]
        second = reopen(j, bj, not ro, None)[1]["options"][0]
        if bad:
            second["detect-zeroes"] = "unmap"
        return "blockdev-reopen", {"options": [first, second]}

    def reopen_file(i: int, ro: bool, auto_ro: bool) -> tuple[str, Any]:
        return "blockdev-reopen", {"options": [{
            "driver": "file", "node-name": f"hd{i}-file", "filename": f"@{IMAGES[i]}",
            "read-only": ro, "auto-read-only": auto_ro}]}

    def delete(name: str) -> tuple[str, Any]:
        return "blockdev-del", {"node-name": name}

    return st.one_of(
        st.builds(add_hd, IDX, BACKING, st.booleans(), st.booleans()),
        st.builds(add_file, IDX, st.booleans()),
        st.builds(add_raw, NAMES),
        st.just(("blockdev-add", {"driver": "null-co", "node-name": "n"})),
        st.builds(reopen, IDX, BACKING, st.booleans(), st.one_of(st.none(), NAMES)),
        st.builds(delete, NAMES),
        st.builds(reopen2, IDX, IDX, BACKING, BACKING, st.booleans(), st.booleans()),
        st.builds(reopen_file, IDX, st.booleans(), st.booleans()),
    )


def _fill(value: Any, d: Path) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, d) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, d) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        return str(d / value[1:])
    return value


async def _scenario(d: Path, ops: list[tuple[str, dict[str, Any]]]) -> None:
    daemon = Daemon(_schema())
    for cmd, raw_args in ops:
        args = daemon.schema.visit_command_args(cmd, _fill(raw_args, d))
        before = graph_snapshot(daemon.graph)
        try:
            await daemon.execute(cmd, args)
        except QMPError:
            assert graph_snapshot(daemon.graph) == before, (cmd, raw_args)
        problems = check_graph(daemon.graph)
        assert not problems, (cmd, raw_args, problems)
    await daemon.stop()
    assert len(daemon.graph) == 0
    import os

    for name in IMAGES:
        fd = os.open(d / name, os.O_RDONLY)
        try:
            for byte in (100, 101, 102, 103, 200, 201, 202, 203):
                assert not _conflicts(fd, byte), (name, byte)
        finally:
            os.close(fd)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=PREFIX, rest=st.lists(_op(), min_size=1, max_size=12))
def test_random_graph_commands(
    templates: Path, tmp_path: Path, prefix: list[tuple[str, dict[str, Any]]],
    rest: list[tuple[str, dict[str, Any]]],
) -> None:
    ops = prefix + rest
    d = tmp_path / "run"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    for name in IMAGES:
        shutil.copy(templates / name, d / name)
    asyncio.run(_scenario(d, ops))
