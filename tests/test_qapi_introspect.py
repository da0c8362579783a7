"""``query-qmp-schema``: QEMU 7.2's introspection format, checked against QSD.

Type names are masked as numbers, so two schemas are compared by structure:
``canonical()`` walks everything reachable from one command or event and
renames the types in the order the walk meets them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from blockd.qapi import Schema
from tests.conftest import require_tool

SHARED_WITH_QSD = [
    "blockdev-add",
    "blockdev-del",
    "blockdev-reopen",
    "query-named-block-nodes",
    "block-stream",
    "block-commit",
    "job-cancel",
    "query-jobs",
    "qmp_capabilities",
    "query-version",
    "object-add",
    "object-del",
    "qom-list",
    "query-block",
    "query-blockstats",
    "x-debug-query-block-graph",
    "block_resize",
    "block-set-write-threshold",
    "query-block-jobs",
    "block-job-cancel",
    "block-job-set-speed",
    "block-job-pause",
    "block-job-resume",
    "block-job-complete",
    "block-job-finalize",
    "block-job-dismiss",
    "job-pause",
    "job-resume",
    "job-complete",
    "job-finalize",
    "job-dismiss",
    "query-commands",
    "query-qmp-schema",
    "quit",
    "JOB_STATUS_CHANGE",
    "BLOCK_JOB_COMPLETED",
    "BLOCK_JOB_CANCELLED",
    "BLOCK_JOB_ERROR",
    "BLOCK_JOB_READY",
    "BLOCK_JOB_PENDING",
]


def canonical(schema: list[dict[str, Any]], root: str) -> dict[str, dict[str, Any]]:
    """Everything reachable from ``root``, with masked names renamed T0, T1, ..."""
    by_name = {e["name"]: e for e in schema}
    names = {root: root}
    order = [root]

    def ref(name: str) -> str:
        if name.startswith("["):
            return "[" + ref(name[1:-1]) + "]"
        if name not in names:
            builtin = by_name[name]["meta-type"] == "builtin"
            names[name] = name if builtin else f"T{len(names)}"
            order.append(name)
        return names[name]

    out: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(order):
        entry = dict(by_name[order[i]])
        i += 1
        entry["name"] = names[entry["name"]]
        meta = entry["meta-type"]
        if meta in ("command", "event"):
            entry["arg-type"] = ref(entry["arg-type"])
            if "ret-type" in entry:
                entry["ret-type"] = ref(entry["ret-type"])
        elif meta in ("object", "alternate"):
            entry["members"] = [dict(m, type=ref(m["type"])) for m in entry["members"]]
            if "variants" in entry:
                entry["variants"] = [dict(v, type=ref(v["type"])) for v in entry["variants"]]
        elif meta == "array":
            entry["element-type"] = ref(entry["element-type"])
        out[entry["name"]] = entry
    return out


def test_layout_follows_qemu_generator() -> None:
    info = Schema.load_default().introspect()
    metas = [e["meta-type"] for e in info]
    # Commands and events first, in schema order; then the types they use.
    first_type = next(i for i, m in enumerate(metas) if m not in ("command", "event"))
    assert all(m not in ("command", "event") for m in metas[first_type:])
    assert info[0] == {
        "name": "query-block",
        "meta-type": "command",
        "arg-type": "0",
        "ret-type": "[1]",
    }
    # Masked names are assigned in order of first use, from 0.
    masked = [e["name"] for e in info if e["name"].isdigit()]
    assert sorted(masked, key=int) == [str(i) for i in range(len(masked))]
    assert info[first_type]["name"] == "0"  # q_empty, used by query-block
    assert info[first_type]["members"] == []
    names = {e["name"] for e in info}
    for e in info:
        refs = [e.get("arg-type"), e.get("ret-type"), e.get("element-type")]
        refs += [m.get("type") for m in e.get("members", [])]
        refs += [v["type"] for v in e.get("variants", [])]
        assert all(r in names for r in refs if r is not None), e


def test_members_defaults_hidden_and_ints_unified() -> None:
    info = Schema.load_default().introspect()
    builtins = {e["name"]: e["json-type"] for e in info if e["meta-type"] == "builtin"}
    assert builtins == {
        "str": "string",
        "int": "int",
        "number": "number",
        "bool": "boolean",
        "null": "null",
        "any": "value",
    }
    for e in info:
        for m in e.get("members", []) if e["meta-type"] == "object" else []:
            assert m.get("default", None) is None  # optional: null; our defaults never shown
            assert m["type"] in {x["name"] for x in info}


def test_blockdev_add_arguments() -> None:
    schema = Schema.load_default()
    info = {e["name"]: e for e in schema.introspect()}
    arg = info[info["blockdev-add"]["arg-type"]]
    assert arg["tag"] == "driver"
    assert [m["name"] for m in arg["members"]] == [
        "driver",
        "node-name",
        "discard",
        "cache",
        "read-only",
        "auto-read-only",
        "force-share",
        "detect-zeroes",
    ]
    assert "default" not in arg["members"][0] and arg["members"][1]["default"] is None
    cases = [v["case"] for v in arg["variants"]]
    assert len(cases) == len(set(cases)) == 42
    file_branch = info[next(v["type"] for v in arg["variants"] if v["case"] == "file")]
    assert file_branch["features"] == ["dynamic-auto-read-only"]
    assert file_branch["members"][-1] == {
        "name": "x-check-cache-dropped",
        "type": "bool",
        "default": None,
        "features": ["unstable"],
    }


def test_canonical_form_sees_differences() -> None:
    info = Schema.load_default().introspect()
    changed = json.loads(json.dumps(info))
    for e in changed:
        for m in e.get("members", []):
            if m.get("name") == "x-check-cache-dropped":
                del m["features"]
    assert canonical(info, "blockdev-add") == canonical(info, "blockdev-add")
    assert canonical(changed, "blockdev-add") != canonical(info, "blockdev-add")
    assert canonical(changed, "block-stream") == canonical(info, "block-stream")


def test_introspection_is_cached() -> None:
    schema = Schema.load_default()
    assert schema.introspect() is schema.introspect()


def _qsd_schema(binary: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="qapi-qsd-") as tmp:
        path = Path(tmp) / "qmp.sock"
        proc = subprocess.Popen(
            [
                binary,
                "--chardev",
                f"socket,path={path},server=on,wait=off,id=m0",
                "--monitor",
                "chardev=m0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not path.exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                rfile = sock.makefile("rb")
                rfile.readline()
                sock.sendall(b'{"execute": "qmp_capabilities"}\n')
                rfile.readline()
                sock.sendall(b'{"execute": "query-qmp-schema"}\n')
                reply: list[dict[str, Any]] = json.loads(rfile.readline())["return"]
                rfile.close()
                return reply
        finally:
            proc.terminate()
            proc.wait()


@pytest.fixture(scope="module")
def qsd_schema() -> list[dict[str, Any]]:
    return _qsd_schema(require_tool("qemu-storage-daemon"))


@pytest.mark.qemu
@pytest.mark.parametrize("root", SHARED_WITH_QSD)
def test_structure_matches_qsd(qsd_schema: list[dict[str, Any]], root: str) -> None:
    ours = canonical(Schema.load_default().introspect(), root)
    theirs = canonical(qsd_schema, root)
    assert ours == theirs


@pytest.mark.qemu
def test_command_order_matches_qsd(qsd_schema: list[dict[str, Any]]) -> None:
    ours = [
        e["name"]
        for e in Schema.load_default().introspect()
        if e["meta-type"] in ("command", "event")
    ]
    theirs = [e["name"] for e in qsd_schema if e["meta-type"] in ("command", "event")]
    assert [n for n in ours if n in theirs] == [n for n in theirs if n in ours]
    assert set(SHARED_WITH_QSD) <= set(theirs)
