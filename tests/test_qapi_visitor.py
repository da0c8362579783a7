"""QMP argument validation: QEMU 7.2's rules and exact error texts.

``INVALID_ARGS`` was recorded from qemu-storage-daemon 7.2; the unit test checks
blockd against the recorded text, and the ``qemu`` test replays every case
against a live QSD so the table can never drift from the oracle.  Every case
fails while QEMU visits the arguments, before the command runs.
"""

from __future__ import annotations

import json
import random
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blockd.qapi import Schema
from blockd.qmp.errors import CommandNotFound, GenericError
from tests.conftest import require_tool

INVALID_ARGS: list[tuple[str, dict[str, Any], str]] = [
    ("blockdev-del", {}, "Parameter 'node-name' is missing"),
    ("blockdev-del", {"node-name": 1}, "Invalid parameter type for 'node-name', expected: string"),
    (
        "blockdev-del",
        {"node-name": None},
        "Invalid parameter type for 'node-name', expected: string",
    ),
    ("blockdev-del", {"node-name": "x", "bogus": 1}, "Parameter 'bogus' is unexpected"),
    ("blockdev-del", {"bogus": 1}, "Parameter 'node-name' is missing"),
    ("query-block", {"x": 1}, "Parameter 'x' is unexpected"),
    (
        "query-named-block-nodes",
        {"flat": "yes"},
        "Invalid parameter type for 'flat', expected: boolean",
    ),
    (
        "query-named-block-nodes",
        {"flat": 1},
        "Invalid parameter type for 'flat', expected: boolean",
    ),
    ("query-version", {"a": 1, "b": 2, "c": 3}, "Parameter 'b' is unexpected"),
    ("quit", {"zz": None}, "Parameter 'zz' is unexpected"),
    ("qmp_capabilities", {"enable": ["foo"]}, "Parameter 'null' does not accept value 'foo'"),
    ("qmp_capabilities", {"enable": "oob"}, "Invalid parameter type for 'enable', expected: array"),
    (
        "qmp_capabilities",
        {"enable": [1]},
        "Invalid parameter type for 'enable[0]', expected: string",
    ),
    (
        "qmp_capabilities",
        {"enable": ["oob", None]},
        "Invalid parameter type for 'enable[1]', expected: string",
    ),
    (
        "blockdev-add",
        {"driver": "bogus", "node-name": "n"},
        "Parameter 'driver' does not accept value 'bogus'",
    ),
    ("blockdev-add", {"driver": ""}, "Parameter 'driver' does not accept value ''"),
    ("blockdev-add", {"driver": None}, "Invalid parameter type for 'driver', expected: string"),
    ("blockdev-add", {"driver": 5}, "Invalid parameter type for 'driver', expected: string"),
    ("blockdev-add", {"node-name": "n"}, "Parameter 'driver' is missing"),
    ("blockdev-add", {}, "Parameter 'driver' is missing"),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "aio": "fast"},
        "Parameter 'aio' does not accept value 'fast'",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "locking": True},
        "Invalid parameter type for 'locking', expected: string",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "discard": "maybe"},
        "Parameter 'discard' does not accept value 'maybe'",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "detect-zeroes": "sometimes"},
        "Parameter 'detect-zeroes' does not accept value 'sometimes'",
    ),
    ("blockdev-add", {"driver": "file"}, "Parameter 'filename' is missing"),
    (
        "blockdev-add",
        {"driver": "file", "filename": 3},
        "Invalid parameter type for 'filename', expected: string",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "cache": True},
        "Invalid parameter type for 'cache', expected: object",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "cache": {"direct": "on"}},
        "Invalid parameter type for 'cache.direct', expected: boolean",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "cache": {"direct": True, "nope": 1}},
        "Parameter 'cache.nope' is unexpected",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": 1, "read-only": "on"},
        "Invalid parameter type for 'read-only', expected: boolean",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": 7, "node-name": 1},
        "Invalid parameter type for 'node-name', expected: string",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "size": 1},
        "Parameter 'size' is unexpected",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "a": 1, "b": 2, "c": 3, "d": 4, "e": 5},
        "Parameter 'e' is unexpected",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "zzz": 1, "aaa": 2},
        "Parameter 'zzz' is unexpected",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "x-check-cache-dropped": 1},
        "Invalid parameter type for 'x-check-cache-dropped', expected: boolean",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "aio-max-batch": "1"},
        "Invalid parameter type for 'aio-max-batch', expected: integer",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "aio-max-batch": 1.5},
        "Invalid parameter type for 'aio-max-batch', expected: integer",
    ),
    (
        "blockdev-add",
        {"driver": "file", "filename": "/dev/null", "aio-max-batch": 9223372036854775808},
        "Invalid parameter type for 'aio-max-batch', expected: integer",
    ),
    ("blockdev-add", {"driver": "raw"}, "Parameter 'file' is missing"),
    (
        "blockdev-add",
        {"driver": "raw", "file": None},
        "Invalid parameter type for 'file', expected: BlockdevRef",
    ),
    (
        "blockdev-add",
        {"driver": "raw", "file": 5},
        "Invalid parameter type for 'file', expected: BlockdevRef",
    ),
    (
        "blockdev-add",
        {"driver": "raw", "file": ["a"]},
        "Invalid parameter type for 'file', expected: BlockdevRef",
    ),
    (
        "blockdev-add",
        {"driver": "raw", "file": {"driver": "file"}},
        "Parameter 'file.filename' is missing",
    ),
    (
        "blockdev-add",
        {"driver": "raw", "file": {"driver": "file", "filename": None}},
        "Invalid parameter type for 'file.filename', expected: string",
    ),
    (
        "blockdev-add",
        {"driver": "raw", "file": {"driver": "nope"}},
        "Parameter 'driver' does not accept value 'nope'",
    ),
    (
        "blockdev-add",
        {"driver": "raw", "file": {"driver": "file", "filename": "/dev/null", "bad": 1}},
        "Parameter 'file.bad' is unexpected",
    ),
    (
        "blockdev-add",
        {"driver": "raw", "file": "f", "offset": "0"},
        "Invalid parameter type for 'offset', expected: integer",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "backing": 1},
        "Invalid parameter type for 'backing', expected: BlockdevRefOrNull",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "backing": {"driver": "raw"}},
        "Parameter 'backing.file' is missing",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "overlap-check": 1},
        "Invalid parameter type for 'overlap-check', expected: Qcow2OverlapChecks",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "overlap-check": "some"},
        "Parameter 'overlap-check' does not accept value 'some'",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "overlap-check": {"template": "x"}},
        "Parameter 'template' does not accept value 'x'",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "overlap-check": {"main-header": 1}},
        "Invalid parameter type for 'overlap-check.main-header', expected: boolean",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "encrypt": {"format": "des"}},
        "Parameter 'format' does not accept value 'des'",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "encrypt": {}},
        "Parameter 'encrypt.format' is missing",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "encrypt": {"format": "luks", "x": 1}},
        "Parameter 'encrypt.x' is unexpected",
    ),
    (
        "blockdev-add",
        {"driver": "qcow2", "file": "f", "data-file": False},
        "Invalid parameter type for 'data-file', expected: BlockdevRef",
    ),
    (
        "blockdev-add",
        {"driver": "quorum", "vote-threshold": 1, "children": "a"},
        "Invalid parameter type for 'children', expected: array",
    ),
    (
        "blockdev-add",
        {"driver": "quorum", "vote-threshold": 1, "children": [1]},
        "Invalid parameter type for 'null', expected: BlockdevRef",
    ),
    (
        "blockdev-add",
        {"driver": "quorum", "vote-threshold": 1, "children": ["a", {"driver": "raw"}]},
        "Parameter 'children[1].file' is missing",
    ),
    (
        "blockdev-add",
        {
            "driver": "quorum",
            "children": ["a", {"driver": "raw", "file": {"driver": "file", "filename": False}}],
            "vote-threshold": 1,
        },
        "Invalid parameter type for 'children[1].file.filename', expected: string",
    ),
    (
        "blockdev-add",
        {"driver": "quorum", "children": ["a"]},
        "Parameter 'vote-threshold' is missing",
    ),
    (
        "blockdev-add",
        {"driver": "blkdebug", "image": "a", "inject-error": [{"event": "bogus"}]},
        "Parameter 'event' does not accept value 'bogus'",
    ),
    (
        "blockdev-add",
        {"driver": "blkdebug", "image": "a", "inject-error": [{}]},
        "Parameter 'inject-error[0].event' is missing",
    ),
    (
        "blockdev-add",
        {"driver": "blkdebug", "image": "a", "take-child-perms": ["read"]},
        "Parameter 'null' does not accept value 'read'",
    ),
    (
        "blockdev-add",
        {"driver": "blkdebug", "image": "a", "max-transfer": 2147483648},
        "Parameter 'max-transfer' expects int32_t",
    ),
    (
        "blockdev-add",
        {"driver": "blkdebug", "image": "a", "max-transfer": -2147483649},
        "Parameter 'max-transfer' expects int32_t",
    ),
    (
        "blockdev-add",
        {"driver": "blklogwrites", "file": "a", "log": "b", "log-sector-size": -1},
        "Parameter 'log-sector-size' expects uint32_t",
    ),
    (
        "blockdev-add",
        {"driver": "blklogwrites", "file": "a", "log": "b", "log-sector-size": 4294967296},
        "Parameter 'log-sector-size' expects uint32_t",
    ),
    (
        "blockdev-add",
        {"driver": "blklogwrites", "file": "a", "log": "b", "log-super-update-interval": "x"},
        "Parameter 'log-super-update-interval' expects uint64",
    ),
    (
        "blockdev-add",
        {
            "driver": "blklogwrites",
            "file": "a",
            "log": "b",
            "log-super-update-interval": 18446744073709551616,
        },
        "Parameter 'log-super-update-interval' expects uint64",
    ),
    (
        "blockdev-add",
        {"driver": "nbd", "server": {"type": "inet", "host": "h", "port": "1", "to": 70000}},
        "Parameter 'to' expects uint16_t",
    ),
    (
        "blockdev-add",
        {"driver": "nbd", "server": {"type": "unix"}},
        "Parameter 'server.path' is missing",
    ),
    (
        "blockdev-add",
        {
            "driver": "gluster",
            "volume": "v",
            "path": "p",
            "server": [{"type": "inet", "host": "h", "port": 1}],
        },
        "Invalid parameter type for 'server[0].port', expected: string",
    ),
    (
        "blockdev-add",
        {"driver": "null-co", "latency-ns": -1.0},
        "Parameter 'latency-ns' expects uint64",
    ),
    (
        "blockdev-add",
        {"driver": "null-co", "size": "1G"},
        "Invalid parameter type for 'size', expected: integer",
    ),
    (
        "blockdev-add",
        {
            "driver": "ssh",
            "server": {"host": "h", "port": "22"},
            "path": "/p",
            "host-key-check": {"mode": "hash", "type": "crc", "hash": "x"},
        },
        "Parameter 'type' does not accept value 'crc'",
    ),
    ("blockdev-reopen", {}, "Parameter 'options' is missing"),
    ("blockdev-reopen", {"options": {}}, "Invalid parameter type for 'options', expected: array"),
    ("blockdev-reopen", {"options": [{}]}, "Parameter 'options[0].driver' is missing"),
    (
        "blockdev-reopen",
        {"options": [{"driver": "bogus"}]},
        "Parameter 'driver' does not accept value 'bogus'",
    ),
    (
        "blockdev-reopen",
        {"options": [{"driver": "raw", "file": {"driver": "file", "filename": None}}]},
        "Invalid parameter type for 'options[0].file.filename', expected: string",
    ),
    (
        "blockdev-reopen",
        {
            "options": [
                {"driver": "file", "filename": "/dev/null"},
                {"driver": "file", "filename": 1},
            ]
        },
        "Invalid parameter type for 'options[1].filename', expected: string",
    ),
    (
        "blockdev-reopen",
        {"options": [{"driver": "file", "filename": "/dev/null", "node-name": "n", "x": 1}]},
        "Parameter 'options[0].x' is unexpected",
    ),
    (
        "blockdev-reopen",
        {"options": [{"driver": "file", "filename": "/dev/null"}], "extra": True},
        "Parameter 'extra' is unexpected",
    ),
    ("block-stream", {}, "Parameter 'device' is missing"),
    (
        "block-stream",
        {"device": "d", "speed": "fast"},
        "Invalid parameter type for 'speed', expected: integer",
    ),
    (
        "block-stream",
        {"device": "d", "on-error": "retry"},
        "Parameter 'on-error' does not accept value 'retry'",
    ),
    (
        "block-stream",
        {"device": "d", "auto-finalize": 0},
        "Invalid parameter type for 'auto-finalize', expected: boolean",
    ),
    (
        "block-commit",
        {"device": "d", "top": 1},
        "Invalid parameter type for 'top', expected: string",
    ),
    ("block-commit", {"job-id": 1}, "Invalid parameter type for 'job-id', expected: string"),
    (
        "block-job-cancel",
        {"device": "d", "force": "yes"},
        "Invalid parameter type for 'force', expected: boolean",
    ),
    ("block-job-set-speed", {"device": "d"}, "Parameter 'speed' is missing"),
    (
        "block-job-set-speed",
        {"device": "d", "speed": None},
        "Invalid parameter type for 'speed', expected: integer",
    ),
    ("job-cancel", {}, "Parameter 'id' is missing"),
    ("job-cancel", {"id": ["j"]}, "Invalid parameter type for 'id', expected: string"),
    ("job-dismiss", {"id": "j", "force": True}, "Parameter 'force' is unexpected"),
    ("query-jobs", {"id": "j"}, "Parameter 'id' is unexpected"),
    ("block_resize", {"node-name": "n"}, "Parameter 'size' is missing"),
    (
        "block_resize",
        {"node-name": "n", "size": "1M"},
        "Invalid parameter type for 'size', expected: integer",
    ),
    (
        "block-set-write-threshold",
        {"node-name": "n", "write-threshold": "x"},
        "Parameter 'write-threshold' expects uint64",
    ),
    (
        "block-set-write-threshold",
        {"node-name": "n", "write-threshold": 1.0},
        "Parameter 'write-threshold' expects uint64",
    ),
    (
        "block-set-write-threshold",
        {"node-name": "n", "write-threshold": 18446744073709551616},
        "Parameter 'write-threshold' expects uint64",
    ),
    ("object-add", {}, "Parameter 'qom-type' is missing"),
    (
        "object-add",
        {"qom-type": "nonsense", "id": "o"},
        "Parameter 'qom-type' does not accept value 'nonsense'",
    ),
    ("object-add", {"qom-type": "iothread"}, "Parameter 'id' is missing"),
    (
        "object-add",
        {"qom-type": "iothread", "id": "o", "poll-max-ns": "1"},
        "Invalid parameter type for 'poll-max-ns', expected: integer",
    ),
    (
        "object-add",
        {"qom-type": "iothread", "id": "o", "bogus": 1},
        "Parameter 'bogus' is unexpected",
    ),
    (
        "object-add",
        {"qom-type": "throttle-group", "id": "t", "limits": {"iops-total": "1"}},
        "Invalid parameter type for 'limits.iops-total', expected: integer",
    ),
    (
        "object-add",
        {"qom-type": "throttle-group", "id": "t", "limits": {"bps": 1}},
        "Parameter 'limits.bps' is unexpected",
    ),
    (
        "object-add",
        {"qom-type": "throttle-group", "id": "t", "x-iops-total": True},
        "Invalid parameter type for 'x-iops-total', expected: integer",
    ),
    (
        "object-add",
        {"qom-type": "secret", "id": "s", "format": "hex"},
        "Parameter 'format' does not accept value 'hex'",
    ),
    (
        "object-add",
        {"qom-type": "memory-backend-ram", "id": "m", "size": -1.5},
        "Parameter 'size' expects uint64",
    ),
    (
        "object-add",
        {"qom-type": "memory-backend-ram", "id": "m", "size": 1, "host-nodes": [70000]},
        "Parameter 'null' expects uint16_t",
    ),
    (
        "object-add",
        {"qom-type": "secret_keyring", "id": "k", "serial": 2147483648},
        "Parameter 'serial' expects int32_t",
    ),
    (
        "object-add",
        {"qom-type": "authz-list", "id": "a", "rules": [{"match": "m"}]},
        "Parameter 'rules[0].policy' is missing",
    ),
    ("object-del", {}, "Parameter 'id' is missing"),
    ("qom-list", {"path": 5}, "Invalid parameter type for 'path', expected: string"),
]


def _desc(command: str, args: dict[str, Any] | None) -> str:
    try:
        Schema.load_default().visit_command_args(command, args)
    except GenericError as e:
        return e.desc
    return "OK"


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    INVALID_ARGS,
    ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(INVALID_ARGS)],
)
def test_invalid_args_match_qemu_text(command: str, args: dict[str, Any], expected: str) -> None:
    assert _desc(command, args) == expected


def test_valid_args_are_returned_as_a_copy() -> None:
    schema = Schema.load_default()
    args = {
        "driver": "qcow2",
        "node-name": "n",
        "file": {"driver": "file", "filename": "/x", "cache": {"direct": True}},
        "backing": None,
        "overlap-check": {"template": "all"},
    }
    out = schema.visit_command_args("blockdev-add", args)
    assert out == args
    assert out is not args and out["file"] is not args["file"]


def test_no_arguments_is_like_empty() -> None:
    schema = Schema.load_default()
    assert schema.visit_command_args("query-block", None) == {}
    assert schema.visit_command_args("query-named-block-nodes", None) == {}
    assert _desc("blockdev-del", None) == "Parameter 'node-name' is missing"


def test_optional_member_present_as_null_is_visited() -> None:
    assert _desc("blockdev-add", {"driver": "file", "filename": "f", "node-name": None}) == (
        "Invalid parameter type for 'node-name', expected: string"
    )


def test_backing_null_and_reference() -> None:
    schema = Schema.load_default()
    for backing in (None, "node0", {"driver": "null-co"}):
        schema.visit_command_args(
            "blockdev-add", {"driver": "qcow2", "file": "f", "backing": backing}
        )


def test_uint64_accepts_negative_and_wraps() -> None:
    out = Schema.load_default().visit_command_args(
        "block-set-write-threshold", {"node-name": "n", "write-threshold": -1}
    )
    assert out["write-threshold"] == 2**64 - 1


def test_unknown_command() -> None:
    with pytest.raises(CommandNotFound) as exc:
        Schema.load_default().visit_command_args("no-such", {})
    assert exc.value.desc == "The command no-such has not been found"


def test_device_add_takes_extra_properties() -> None:
    schema = Schema.load_default()
    args = {"driver": "virtio-blk", "id": "d0", "drive": "n0", "serial": 7}
    assert schema.visit_command_args("device_add", args) == args
    assert _desc("device_add", {"id": "d0"}) == "Parameter 'driver' is missing"
    assert _desc("device_add", {"driver": 1}) == "Parameter 'driver' is missing"


def test_blockd_only_commands() -> None:
    assert _desc("human-monitor-command", {}) == "Parameter 'command-line' is missing"
    assert _desc("human-monitor-command", {"command-line": "info", "cpu-index": "0"}) == (
        "Invalid parameter type for 'cpu-index', expected: integer"
    )
    assert _desc("device_del", {"id": 1}) == "Invalid parameter type for 'id', expected: string"


# iotest 245 (test_incorrect_parameters_single_file) expects QEMU 6.0 wording
# for x-blockdev-reopen, whose arguments are one node's flat options.
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"node-name": None}, "Invalid parameter type for 'node-name', expected: string"),
        ({"driver": ""}, "Invalid parameter ''"),
        ({"driver": None}, "Invalid parameter type for 'driver', expected: string"),
        ({"file": None}, "Invalid parameter type for 'file', expected: BlockdevRef"),
        (
            {"file": {"driver": "file", "filename": None}},
            "Invalid parameter type for 'file.filename', expected: string",
        ),
        ({"file": {"driver": "file", "filename": "f", "aio": "x"}}, "Invalid parameter 'x'"),
    ],
)
def test_x_blockdev_reopen_uses_qemu_6_0_wording(change: dict[str, Any], expected: str) -> None:
    opts = {
        "driver": "qcow2",
        "node-name": "hd0",
        "file": {"driver": "file", "node-name": "hd0-file", "filename": "f"},
    }
    assert _desc("x-blockdev-reopen", {**opts, **change}) == expected


def _visit_desc(type_name: str, value: Any, name: str | None = None, compat: str = "7.2") -> str:
    try:
        Schema.load_default().visit(type_name, value, name, compat=compat)
    except GenericError as e:
        return e.desc
    return "OK"


def test_visit_any_type_and_compat() -> None:
    schema = Schema.load_default()
    assert schema.visit("BlockdevRef", "n0", "file") == "n0"
    assert _visit_desc("BlockdevOptions", {"driver": "x"}) == (
        "Parameter 'driver' does not accept value 'x'"
    )
    assert _visit_desc("BlockdevOptions", {"driver": "x"}, compat="6.0") == (
        "Invalid parameter 'x'"
    )
    assert _visit_desc("BlockdevOptions", [], "opts") == (
        "Invalid parameter type for 'opts', expected: object"
    )
    assert _visit_desc("uint16", 65536) == "Parameter 'null' expects uint16_t"
    assert _visit_desc("int8", -129, "x") == "Parameter 'x' expects int8_t"
    assert schema.visit("number", 1) == 1.0
    assert schema.visit("any", {"a": [1]}) == {"a": [1]}
    assert _visit_desc("null", 0, "v") == "Invalid parameter type for 'v', expected: null"
    with pytest.raises(KeyError):
        schema.visit("NoSuchType", 1)


def test_unexpected_key_order_follows_qemu_hash_tables() -> None:
    # Recorded from QSD: with several unknown keys QEMU names the first one
    # in its GHashTable, not the first one written.
    assert _desc("query-version", {"a": 1, "b": 2, "c": 3}) == "Parameter 'b' is unexpected"
    assert _desc("blockdev-add", {"driver": "file", "filename": "f", "zzz": 1, "aaa": 2}) == (
        "Parameter 'zzz' is unexpected"
    )


# ---------------------------------------------------------------- against QSD


class QSDMonitor:
    """A qemu-storage-daemon with a raw QMP connection (no client library)."""

    def __init__(self, binary: str) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="qapi-qsd-")
        path = Path(self.dir.name) / "qmp.sock"
        self.proc = subprocess.Popen(
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
        deadline = time.monotonic() + 10
        while not path.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("qemu-storage-daemon did not start")
            time.sleep(0.02)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.rfile = self.sock.makefile("rb")
        json.loads(self.rfile.readline())  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": command}
        if args is not None:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply: dict[str, Any] = json.loads(self.rfile.readline())
            if "return" in reply or "error" in reply:
                return reply

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()
        self.proc.terminate()
        self.proc.wait()
        self.dir.cleanup()


@pytest.fixture(scope="module")
def qsd_monitor() -> Iterator[QSDMonitor]:
    mon = QSDMonitor(require_tool("qemu-storage-daemon"))
    yield mon
    mon.close()


@pytest.mark.qemu
def test_invalid_args_against_qsd(qsd_monitor: QSDMonitor) -> None:
    mismatches = []
    for command, args, expected in INVALID_ARGS:
        reply = qsd_monitor.execute(command, args)
        got = reply.get("error", {}).get("desc")
        mine = _desc(command, args)
        if not got == expected == mine:
            mismatches.append((command, args, got, mine))
    assert mismatches == []


@pytest.mark.qemu
def test_random_unexpected_keys_against_qsd(qsd_monitor: QSDMonitor) -> None:
    """Many unknown keys (non-ASCII too), mixed with known ones, in random order:
    blockd must name the same one QSD names (GHashTable resizes included)."""
    rng = random.Random(245)
    known = {
        "node-name": "n",
        "discard": "ignore",
        "read-only": False,
        "locking": "auto",
        "aio": "threads",
        "drop-cache": True,
        "pr-manager": "p",
        "aio-max-batch": 0,
    }
    mismatches = []
    for _ in range(150):
        args: dict[str, Any] = {"driver": "file", "filename": "/nonexistent/x"}
        keys = rng.sample(sorted(known), rng.randint(0, len(known)))
        keys += [
            "".join(
                rng.choice(string.ascii_lowercase + "-_\u00e9") for _ in range(rng.randint(1, 8))
            )
            for _ in range(rng.randint(1, 30))
        ]
        rng.shuffle(keys)
        for k in keys:
            args[k] = known.get(k, 1)
        got = qsd_monitor.execute("blockdev-add", args).get("error", {}).get("desc")
        mine = _desc("blockdev-add", args)
        if got != mine:
            mismatches.append((list(args), got, mine))
    assert mismatches == []
