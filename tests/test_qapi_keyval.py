"""Command-line (keyval) input: ``keyval_parse`` and ``Schema.visit_keyval``.

The tables were recorded from ``qemu-storage-daemon --blockdev TEXT`` and
``--object TEXT`` (7.2); messages in ``AFTER_VISIT`` come from QEMU code that
runs after the arguments were visited successfully, so blockd's visit must pass
for those.  The ``qemu`` tests replay the tables against the real binary.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from blockd.qapi import Schema, keyval_parse, keyval_parse_help
from blockd.qmp.errors import GenericError
from tests.conftest import require_tool

AFTER_VISIT = {
    "'node-name' must be specified for the root node",
    "poll-max-ns value must be in range [0, 9223372036854775807]",
}

BLOCKDEV_CLI: list[tuple[str, str]] = [
    ("driver=null-co,size=abc", "Parameter 'size' expects integer"),
    ("driver=null-co,size=1G", "Parameter 'size' expects integer"),
    ("driver=null-co,read-zeroes=maybe", "Parameter 'read-zeroes' expects 'on' or 'off'"),
    ("driver=null-co,read-zeroes=yes", "'node-name' must be specified for the root node"),
    ("driver=null-co,read-zeroes=y", "'node-name' must be specified for the root node"),
    ("driver=null-co,read-zeroes=true", "'node-name' must be specified for the root node"),
    ("driver=null-co,read-zeroes=n", "'node-name' must be specified for the root node"),
    ("driver=null-co,read-zeroes=ON", "Parameter 'read-zeroes' expects 'on' or 'off'"),
    ("driver=null-co,latency-ns=-1", "'node-name' must be specified for the root node"),
    ("driver=null-co,latency-ns=x", "Parameter 'latency-ns' expects integer"),
    ("driver=null-co,latency-ns=18446744073709551616", "Parameter 'latency-ns' expects integer"),
    (
        "driver=null-co,latency-ns=-18446744073709551615",
        "'node-name' must be specified for the root node",
    ),
    ("driver=null-co,latency-ns=0x", "Parameter 'latency-ns' expects integer"),
    ("driver=null-co,latency-ns=08", "Parameter 'latency-ns' expects integer"),
    ("driver=null-co,latency-ns=07", "'node-name' must be specified for the root node"),
    ("driver=file", "Parameter 'filename' is missing"),
    ("driver=null-co,cache=on", "Invalid parameter type for 'cache', expected: object"),
    (
        "driver=null-co,cache.direct=yes,cache.no-flush=x",
        "Parameter 'cache.no-flush' expects 'on' or 'off'",
    ),
    ("driver=null-co,node-name.x=1", "Parameters 'node-name.*' are unexpected"),
    ("driver=null-co,a.0=1,a.b=2", "Parameters 'a.*' used inconsistently"),
    ("driver=null-co,a.1=1", "Parameter 'a.0' missing"),
    ("driver=null-co,a.0=1,a.2=1", "Parameter 'a.1' missing"),
    ("driver=null-co,foo", "Expected '=' after parameter 'foo'"),
    ("driver=null-co,,x=1", "Parameter 'driver' does not accept value 'null-co,x=1'"),
    ("driver=null-co,x..y=1", "Invalid parameter 'x..y'"),
    ("driver=null-co,.x=1", "Invalid parameter '.x'"),
    ("driver=null-co,x.=1", "Invalid parameter 'x.'"),
    ("driver=null-co,0=1", "Invalid parameter '0'"),
    ("driver=null-co,a.0x=1", "Invalid parameter 'a.0x'"),
    ("driver=null-co,a=1,a.b=2", "Parameters 'a.*' used inconsistently"),
    ("driver=null-co,a.b=1,a=2", "Parameters 'a.*' used inconsistently"),
    ("driver=null-co,a=1,a=2", "Parameter 'a' is unexpected"),
    ("driver=quorum,children.0=a,vote-threshold=x", "Parameter 'vote-threshold' expects integer"),
    (
        "driver=quorum,children.0.driver=x,vote-threshold=1",
        "Parameter 'driver' does not accept value 'x'",
    ),
    (
        "driver=quorum,children.0.driver=raw,vote-threshold=1",
        "Parameter 'children.0.file' is missing",
    ),
    (
        "driver=quorum,children=a,vote-threshold=1",
        "Invalid parameter type for 'children', expected: array",
    ),
    (
        "driver=quorum,children.0.x=a,children.0.driver=file,children.0.filename=f,vote-threshold=1",
        "Parameter 'children.0.x' is unexpected",
    ),
    (
        "driver=blkdebug,image=a,max-transfer=99999999999",
        "Parameter 'max-transfer' expects int32_t",
    ),
    (
        "driver=blkdebug,image=a,max-transfer=0x10,align=010,inject-error.0.event=x",
        "Parameter 'event' does not accept value 'x'",
    ),
    (
        "driver=blkdebug,image=a,inject-error.0.event=read_aio,inject-error.0.once=1",
        "Parameter 'inject-error.0.once' expects 'on' or 'off'",
    ),
    (
        "driver=blkdebug,image=a,inject-error.0.event=read_aio,inject-error.1.event=read_aio,inject-error.1.sector=z",
        "Parameter 'inject-error.1.sector' expects integer",
    ),
    (
        "driver=raw,file.driver=file,file.filename=/x,offset=1k",
        "Parameter 'offset' expects integer",
    ),
    (
        "driver=raw,file.driver=file,file.filename=/x,file.locking=x",
        "Parameter 'locking' does not accept value 'x'",
    ),
    (
        "driver=raw,file.driver=file,file.filename=/x,file.bogus=x",
        "Parameter 'file.bogus' is unexpected",
    ),
    (
        "driver=raw,file.driver=file,file.filename.x=/x",
        "Parameters 'file.filename.*' are unexpected",
    ),
    ("driver=null-co,help", "Help is not available for this option"),
    ("help", "Help is not available for this option"),
    ("?", "Help is not available for this option"),
    ("driver=bogus", "Parameter 'driver' does not accept value 'bogus'"),
    ("null-co,size=x", "Parameter 'size' expects integer"),
    ("driver=qcow2,file=x,backing=", "'node-name' must be specified for the root node"),
    ("driver=qcow2,file=x,overlap-check=x", "Parameter 'overlap-check' does not accept value 'x'"),
    (
        "driver=qcow2,file=x,overlap-check.template=all,overlap-check.main-header=on,discard=x",
        "Parameter 'discard' does not accept value 'x'",
    ),
    (
        "driver=qcow2,file=x,overlap-check.template=all,overlap-check.main-header=x",
        "Parameter 'overlap-check.main-header' expects 'on' or 'off'",
    ),
    ("driver=null-co,size=", "Parameter 'size' expects integer"),
    ("driver=null-co,size= 5", "'node-name' must be specified for the root node"),
    ("driver=null-co,size=5 ", "Parameter 'size' expects integer"),
    ("driver=null-co,size=+5", "'node-name' must be specified for the root node"),
    ("driver=null-co,size=-5", "'node-name' must be specified for the root node"),
    ("driver=null-co,size=- 5", "Parameter 'size' expects integer"),
    ("driver=null-co,latency-ns=+5,size=x", "Parameter 'size' expects integer"),
    (
        "driver=nbd,server.type=inet,server.host=h,server.port=1,server.to=70000",
        "Parameter 'to' expects uint16_t",
    ),
    (
        "driver=nbd,server.type=inet,server.host=h,server.port=1,server.to=-1",
        "Parameter 'to' expects uint16_t",
    ),
    (
        "driver=nbd,server.type=inet,server.host=h,server.port=1,server.ipv4=of",
        "Parameter 'server.ipv4' expects 'on' or 'off'",
    ),
    (
        "driver=gluster,volume=v,path=p,server.0.type=inet,server.0.host=h,server.0.port=1,server.1.type=x",
        "Parameter 'type' does not accept value 'x'",
    ),
    (
        "driver=rbd,pool=p,image=i,auth-client-required.0=cephx,auth-client-required.1=x",
        "Parameter 'null' does not accept value 'x'",
    ),
    (
        "driver=null-co," + "a" * 128 + "=1",
        "Parameter '" + "a" * 128 + "' is too long",
    ),
    (
        "driver=null-co,a." + "a" * 128 + "=1",
        "Parameter fragment '" + "a" * 128 + "' is too long",
    ),
    ("driver=null-co,zz=1,yy=2,xx=3", "Parameter 'yy' is unexpected"),
    ("driver=null-co,_x=1", "Invalid parameter '_x'"),
    ("driver=null-co,__org.x_y=1", "Parameter '__org.x_y' is unexpected"),
    ("driver=null-co,x-y_z=1", "Parameter 'x-y_z' is unexpected"),
    ("driver=null-co,x=1,,2", "Parameter 'x' is unexpected"),
    ("driver=null-co,x=", "Parameter 'x' is unexpected"),
    ("driver=null-co,", "'node-name' must be specified for the root node"),
    ("driver=null-co,,", "Parameter 'driver' does not accept value 'null-co,'"),
]

OBJECT_CLI: list[tuple[str, str]] = [
    ("iothread", "Parameter 'id' is missing"),
    ("iothread,id=x,poll-max-ns=abc", "Parameter 'poll-max-ns' expects integer"),
    ("iothread,id=x,poll-max-ns=-1", "poll-max-ns value must be in range [0, 9223372036854775807]"),
    ("iothread,id=x,bogus=1", "Parameter 'bogus' is unexpected"),
    ("throttle-group,id=t,limits.iops-total=x", "Parameter 'limits.iops-total' expects integer"),
    ("throttle-group,id=t,limits.bps=1", "Parameter 'limits.bps' is unexpected"),
    ("throttle-group,id=t,x-iops-total=1x", "Parameter 'x-iops-total' expects integer"),
    ("qom-type=nope,id=x", "Parameter 'qom-type' does not accept value 'nope'"),
    ("memory-backend-ram,id=m,size=1X", "Parameter 'size' expects size"),
    ("memory-backend-ram,id=m,size=1.5", "Parameter 'size' expects size"),
    ("memory-backend-ram,id=m,size=1.5k,host-nodes.0=70000", "Parameter 'null' expects uint16_t"),
    (
        "memory-backend-ram,id=m,size=0x10,host-nodes.0=x",
        "Parameter 'host-nodes.0' expects integer",
    ),
    ("memory-backend-ram,id=m,size=-1", "Parameter 'size' expects size"),
    ("memory-backend-ram,id=m,size=16E", "Parameter 'size' expects size"),
    (
        "memory-backend-ram,id=m,size=15E,prealloc=maybe",
        "Parameter 'prealloc' expects 'on' or 'off'",
    ),
    ("secret_keyring,id=k,serial=2147483648", "Parameter 'serial' expects int32_t"),
    ("secret,id=s,format=hex", "Parameter 'format' does not accept value 'hex'"),
    ("authz-list,id=a,rules.0.match=m", "Parameter 'rules.0.policy' is missing"),
]


def _cli_desc(type_name: str, text: str, implied_key: str) -> str | None:
    """blockd's error for an option string, None when it parses and visits."""
    try:
        Schema.load_default().visit_keyval(type_name, keyval_parse(text, implied_key))
    except GenericError as e:
        return e.desc
    return None


@pytest.mark.parametrize(("text", "expected"), BLOCKDEV_CLI)
def test_blockdev_cli(text: str, expected: str) -> None:
    got = _cli_desc("BlockdevOptions", text, "driver")
    assert got == (None if expected in AFTER_VISIT else expected)


@pytest.mark.parametrize(("text", "expected"), OBJECT_CLI)
def test_object_cli(text: str, expected: str) -> None:
    got = _cli_desc("ObjectOptions", text, "qom-type")
    assert got == (None if expected in AFTER_VISIT else expected)


def test_keyval_parse_nesting_lists_and_escapes() -> None:
    assert keyval_parse("driver=qcow2,file.driver=file,file.filename=a,,b") == {
        "driver": "qcow2",
        "file": {"driver": "file", "filename": "a,b"},
    }
    assert keyval_parse("s.1.h=y,s.0.h=x,s.0.p=1") == {"s": [{"h": "x", "p": "1"}, {"h": "y"}]}
    assert keyval_parse("a.0=x,a.1=y") == {"a": ["x", "y"]}
    assert keyval_parse("") == {}
    assert keyval_parse("x=") == {"x": ""}
    assert keyval_parse("a=1,a=2") == {"a": "2"}


def test_keyval_parse_implied_key() -> None:
    assert keyval_parse("qcow2,node-name=n", "driver") == {"driver": "qcow2", "node-name": "n"}
    assert keyval_parse("iothread,id=io0", "qom-type") == {"qom-type": "iothread", "id": "io0"}
    # Only the first parameter may omit its key.
    with pytest.raises(GenericError) as exc:
        keyval_parse("id=io0,iothread", "qom-type")
    assert exc.value.desc == "Expected '=' after parameter 'iothread'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a..b=1", "Invalid parameter 'a..b'"),
        ("1=1", "Invalid parameter '1'"),
        ("a=1,a.b=2", "Parameters 'a.*' used inconsistently"),
        ("a.b=2,a=1", "Parameters 'a.*' used inconsistently"),
        ("a.0=1,a.x=2", "Parameters 'a.*' used inconsistently"),
        ("a.b.0=1,a.b.2=2", "Parameter 'a.b.1' missing"),
        ("x" * 128 + "=1", "Parameter '" + "x" * 128 + "' is too long"),
        ("a." + "x" * 128 + "=1", "Parameter fragment '" + "x" * 128 + "' is too long"),
        ("foo", "Expected '=' after parameter 'foo'"),
        ("help", "Help is not available for this option"),
    ],
)
def test_keyval_parse_errors(text: str, expected: str) -> None:
    with pytest.raises(GenericError) as exc:
        keyval_parse(text)
    assert exc.value.desc == expected


def test_keyval_help_request() -> None:
    assert keyval_parse_help("driver=null-co,help") == ({"driver": "null-co"}, True)
    assert keyval_parse_help("?") == ({}, True)
    assert keyval_parse_help("driver=x") == ({"driver": "x"}, False)


def test_visit_keyval_converts_scalars() -> None:
    out: dict[str, Any] = Schema.load_default().visit_keyval(
        "BlockdevOptions",
        keyval_parse(
            "driver=blkdebug,image.driver=null-co,image.size=0x100,image.read-zeroes=on,"
            "max-transfer=010,inject-error.0.event=read_aio,inject-error.0.once=yes,"
            "take-child-perms.0=write"
        ),
    )
    assert out == {
        "driver": "blkdebug",
        "image": {"driver": "null-co", "size": 256, "read-zeroes": True},
        "max-transfer": 8,
        "inject-error": [{"event": "read_aio", "once": True}],
        "take-child-perms": ["write"],
    }
    obj = Schema.load_default().visit_keyval(
        "ObjectOptions",
        keyval_parse("memory-backend-ram,id=m,size=1.5k,host-nodes.0=3", "qom-type"),
    )
    assert obj == {"qom-type": "memory-backend-ram", "id": "m", "size": 1536, "host-nodes": [3]}


@pytest.mark.qemu
@pytest.mark.parametrize(
    ("option", "type_name", "implied", "table"),
    [
        ("--blockdev", "BlockdevOptions", "driver", BLOCKDEV_CLI),
        ("--object", "ObjectOptions", "qom-type", OBJECT_CLI),
    ],
)
def test_cli_tables_against_qsd(
    option: str, type_name: str, implied: str, table: list[tuple[str, str]]
) -> None:
    qsd = require_tool("qemu-storage-daemon")
    mismatches = []
    for text, expected in table:
        proc = subprocess.run([qsd, option, text], capture_output=True, text=True, timeout=10)
        prefix = f"qemu-storage-daemon: {option} {text}: "
        got = proc.stderr.strip()
        got = got[len(prefix) :] if got.startswith(prefix) else got
        mine = _cli_desc(type_name, text, implied)
        if got != expected or mine != (None if expected in AFTER_VISIT else expected):
            mismatches.append((text, got, mine))
    assert mismatches == []
