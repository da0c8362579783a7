"""The schema files, their reader, and the ``Schema`` query API."""

from __future__ import annotations

from pathlib import Path

import pytest

import blockd
from blockd.qapi import QAPISchemaError, Schema
from blockd.qapi.ghash import GHashKeys, qdict_order, unvisited_keys
from blockd.qapi.parser import parse_file, parse_schema
from blockd.qapi.types import NO_DEFAULT, AlternateType, EnumType, ObjectType


def test_load_default_is_cached_and_found() -> None:
    schema = Schema.load_default()
    assert schema is Schema.load_default()
    assert schema.main_file.name == "schema.json"
    root = Path(blockd.__file__).parent
    assert schema.main_file.parent in (root / "schema", root.parent / "schema")


def test_commands_and_their_flags() -> None:
    schema = Schema.load_default()
    names = schema.command_names()
    for required in (
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "query-qmp-schema",
        "quit",
        "human-monitor-command",
        "object-add",
        "object-del",
        "qom-list",
        "device_add",
        "device_del",
        "blockdev-add",
        "blockdev-del",
        "blockdev-reopen",
        "x-blockdev-reopen",
        "block-stream",
        "block-commit",
        "query-named-block-nodes",
        "query-block",
        "x-debug-query-block-graph",
        "block_resize",
        "block-set-write-threshold",
        "query-jobs",
        "job-pause",
        "job-resume",
        "job-cancel",
        "job-complete",
        "job-finalize",
        "job-dismiss",
        "query-block-jobs",
        "block-job-pause",
        "block-job-resume",
        "block-job-cancel",
        "block-job-complete",
        "block-job-finalize",
        "block-job-dismiss",
        "block-job-set-speed",
    ):
        assert required in names
    assert len(names) == len(set(names))
    assert schema.query_commands()[0] == {"name": names[-1]}
    add = schema.command("blockdev-add")
    assert add is not None and add.boxed and add.gen and not add.allow_oob
    assert add.arg_type is not None and add.arg_type.name == "BlockdevOptions"
    assert add.ret_type is None
    reopen = schema.command("x-blockdev-reopen")
    assert reopen is not None and reopen.boxed and reopen.arg_type is add.arg_type
    dev = schema.command("device_add")
    assert dev is not None and not dev.gen and dev.features == ["json-cli", "json-cli-hotplug"]
    graph = schema.command("x-debug-query-block-graph")
    assert graph is not None and graph.features == ["unstable"]
    assert graph.ret_type is not None and graph.ret_type.name == "XDbgBlockGraph"
    hmp = schema.command("human-monitor-command")
    assert hmp is not None and hmp.ret_type is not None and hmp.ret_type.name == "str"
    assert schema.command("nope") is None
    for event in (
        "JOB_STATUS_CHANGE",
        "BLOCK_JOB_COMPLETED",
        "BLOCK_JOB_CANCELLED",
        "BLOCK_JOB_ERROR",
        "BLOCK_JOB_READY",
        "BLOCK_JOB_PENDING",
        "SHUTDOWN",
        "DEVICE_DELETED",
    ):
        assert schema.event(event) is not None


def test_types_model() -> None:
    schema = Schema.load_default()
    opts = schema.lookup_type("BlockdevOptions")
    assert isinstance(opts, ObjectType) and opts.tag_name == "driver"
    driver = opts.member("driver")
    assert driver is not None and isinstance(driver.type, EnumType)
    assert len(driver.type.values) == 42
    # Drivers without options get the empty object, appended in enum order.
    assert opts.variant("snapshot-access") is not None
    assert [v.case for v in opts.variants][-1] == "vvfat"
    qcow2 = opts.variant("qcow2")
    assert qcow2 is not None and qcow2.name == "BlockdevOptionsQcow2"
    assert [m.name for m in qcow2.members] == [
        "file",
        "backing",
        "lazy-refcounts",
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
        "overlap-check",
        "cache-size",
        "l2-cache-size",
        "l2-cache-entry-size",
        "refcount-cache-size",
        "cache-clean-interval",
        "encrypt",
        "data-file",
    ]
    ref = schema.lookup_type("BlockdevRefOrNull")
    assert isinstance(ref, AlternateType)
    assert [a.type.name for a in ref.alternatives] == ["BlockdevOptions", "str", "null"]
    objs = schema.lookup_type("ObjectOptions")
    assert isinstance(objs, ObjectType)
    tg = objs.variant("throttle-group")
    assert tg is not None and tg.member("limits") is not None
    assert tg.member("x-iops-total") is not None
    io = objs.variant("iothread")
    assert io is not None and io.name == "IothreadProperties"


def test_defaults() -> None:
    schema = Schema.load_default()
    assert schema.defaults("BlockdevOptions") == {
        "discard": "ignore",
        "read-only": False,
        "auto-read-only": False,
        "force-share": False,
        "detect-zeroes": "off",
    }
    file_defaults = schema.defaults("BlockdevOptions", "file")
    assert file_defaults["locking"] == "auto" and file_defaults["aio"] == "threads"
    assert file_defaults["drop-cache"] is True and file_defaults["read-only"] is False
    assert schema.defaults("BlockdevOptionsRaw") == {"offset": 0}
    assert schema.defaults("BlockdevOptionsNull")["size"] == 1 << 30
    assert schema.defaults("BlockdevCacheOptions") == {"direct": False, "no-flush": False}
    assert schema.defaults("BlockdevOptionsQcow2")["overlap-check"] == "cached"
    assert schema.defaults("BlockdevOptionsQuorum")["read-pattern"] == "quorum"
    assert schema.defaults("BlockdevOptions", "bochs") == schema.defaults("BlockdevOptions")
    assert schema.command_defaults("block-job-cancel") == {"force": False}
    assert schema.command_defaults("block-stream")["on-error"] == "report"
    assert schema.command_defaults("query-block") == {}
    with pytest.raises(KeyError):
        schema.defaults("BlockdevOptions", "nope")
    with pytest.raises(KeyError):
        schema.defaults("BlockdevDriver")
    opts = schema.lookup_type("BlockdevOptions")
    assert isinstance(opts, ObjectType)
    node_name = opts.member("node-name")
    assert node_name is not None and node_name.default is NO_DEFAULT


def test_reader_syntax(tmp_path: Path) -> None:
    (tmp_path / "inc.json").write_text(
        "# comment\n{ 'enum': 'E', 'data': [ 'a', { 'name': 'b', 'features': ['unstable'] } ] }\n"
    )
    (tmp_path / "main.json").write_text(
        "{ 'include': 'inc.json' }\n"
        "{ 'include': 'inc.json' }   # a second include adds nothing\n"
        "{ 'struct': 'S', 'data': { 'e': 'E', '*n': { 'type': 'int', 'default': -1 },\n"
        "  '*l': ['str'], '*t': { 'type': 'bool', 'default': true } } }\n"
        "{ 'command': 'c', 'data': 'S', 'boxed': true, 'returns': ['S'] }\n"
    )
    modules = parse_schema(tmp_path / "main.json")
    assert [m.name for m in modules] == ["main.json", "inc.json"]
    schema = Schema(tmp_path / "main.json")
    assert schema.defaults("S") == {"n": -1, "t": True}
    assert schema.command_names() == ["c"]
    enum = schema.lookup_type("E")
    assert isinstance(enum, EnumType) and enum.members[1].features == ["unstable"]
    assert schema.lookup_type("SList") is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{ 'struct': 'S', 'data': { 'a': 'nope' } }", "uses unknown type 'nope'"),
        ("{ 'struct': 'S' 'data': {} }", "expected ',' or '}'"),
        ("{ 'struct': 'S, 'data': {} }", "expected ',' or '}'"),
        ("{ 'struct': 'S', 'data': {}, 'data': {} }", "duplicate key 'data'"),
        ("[ 'x' ]", "top-level expression must be an object"),
        (
            "{ 'struct': 'S', 'data': { 'a': 'str' } }\n{ 'struct': 'S', 'data': {} }",
            "'S' is already defined",
        ),
        (
            "{ 'struct': 'S', 'data': { 'a': { 'type': 'int', 'default': 1 } } }",
            "mandatory 'a' cannot have a default",
        ),
        ("{ 'frob': 'x' }", "unknown expression kind"),
    ],
)
def test_reader_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(text + "\n")
    with pytest.raises(QAPISchemaError, match=message):
        Schema(tmp_path / "bad.json")


def test_reader_reports_location(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("\n\n{ 'struct': 'S', 'data': { 'a': 'str' ] }\n")
    with pytest.raises(QAPISchemaError, match=r"^bad\.json:3: "):
        parse_file(tmp_path / "bad.json")


def test_every_schema_file_is_included() -> None:
    schema_dir = Schema.load_default().main_file.parent
    included = {m.name for m in parse_schema(schema_dir / "schema.json")}
    assert included == {p.name for p in schema_dir.glob("*.json")}


def test_hash_table_replay() -> None:
    # QDict iterates by tdb_hash bucket, newest first within one bucket.
    assert sorted(qdict_order(["a", "b", "c"])) == ["a", "b", "c"]
    table = GHashKeys()
    for i in range(40):  # grows several times
        table.insert(f"k{i}")
    for i in range(39):  # shrinks again
        table.remove(f"k{i}")
    assert table.first() == "k39"
    table.remove("k39")
    assert table.first() is None
    assert unvisited_keys(["x"]).first() == "x"
