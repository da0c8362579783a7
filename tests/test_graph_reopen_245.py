"""Port of iotest 245's reopen assertions (x-blockdev-reopen, QEMU 6.0 texts) run
against blockd.  Methods that need block jobs or iothreads/devices are left to
the issues that bring those (see the graph engineer's report)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.graph_helpers import VM

pytestmark = pytest.mark.qemu


class Env:
    def __init__(self, d: Path, qemu_img: str, qemu_io: str) -> None:
        self.d = d
        self.qemu_img = qemu_img
        self.qemu_io = qemu_io
        self.hd_path = [str(d / f"hd{i}.img") for i in range(3)]
        self.total_io_cmds = 0
        self.img("create", "-f", "qcow2", self.hd_path[0], "3M")
        self.img("create", "-f", "qcow2", "-b", self.hd_path[0], "-F", "qcow2", self.hd_path[1])
        self.img("create", "-f", "qcow2", self.hd_path[2], "3M")
        self.io("-f", "qcow2", "-c", "write -P 0xa0  0 1M", self.hd_path[0])
        self.io("-f", "qcow2", "-c", "write -P 0xa1 1M 1M", self.hd_path[1])
        self.io("-f", "qcow2", "-c", "write -P 0xa2 2M 1M", self.hd_path[2])
        self.vm = VM(d)

    def img(self, *args: str) -> None:
        subprocess.run([self.qemu_img, *args], check=True, capture_output=True)

    def io(self, *args: str) -> str:
        return subprocess.run([self.qemu_io, *args], check=True, capture_output=True,
                              text=True).stdout

    def hd_opts(self, idx: int) -> dict[str, Any]:
        return {"driver": "qcow2", "node-name": f"hd{idx}",
                "file": {"driver": "file", "node-name": f"hd{idx}-file",
                         "filename": self.hd_path[idx]}}

    def ok(self, reply: dict[str, Any]) -> None:
        assert reply == {"return": {}}, reply

    def err(self, reply: dict[str, Any], msg: str) -> None:
        assert reply.get("error", {}).get("class") == "GenericError", reply
        assert reply["error"]["desc"] == msg

    def add(self, **opts: Any) -> None:
        self.ok(self.vm.qmp("blockdev-add", **opts))

    def delete(self, name: str, errmsg: str | None = None) -> None:
        r = self.vm.qmp("blockdev-del", **{"node-name": name})
        if errmsg:
            self.err(r, errmsg)
        else:
            self.ok(r)

    def run_qemu_io(self, img: str, cmd: str) -> None:
        assert self.vm.hmp_qemu_io(img, cmd) == {"return": ""}
        self.total_io_cmds += 1

    def reopen(self, opts: dict[str, Any], newopts: dict[str, Any] | None = None,
               errmsg: str | None = None) -> None:
        opts = copy.deepcopy(opts)
        for key, value in (newopts or {}).items():
            subdict = opts
            while "." in key:
                prefix, key = key.split(".", 1)
                subdict = opts[prefix]
            subdict[key] = value
        r = self.vm.qmp("x-blockdev-reopen", **opts)
        if errmsg:
            self.err(r, errmsg)
        else:
            self.ok(r)

    def get_node(self, name: str) -> dict[str, Any] | None:
        for node in self.vm.qmp("query-named-block-nodes")["return"]:
            if node["node-name"] == name:
                return dict(node)
        return None

    def graph(self) -> str:
        return json.dumps(self.vm.qmp("query-named-block-nodes"), sort_keys=True)

    def finish(self) -> None:
        self.vm.shutdown()
        found = 0
        for line in self.vm.get_log().split("\n"):
            if line.startswith("Pattern verification failed"):
                raise AssertionError(f"{line} (command #{found})")
            if re.match("(read|wrote) .*/.* bytes at offset", line):
                found += 1
        assert found == self.total_io_cmds


@pytest.fixture
def env(tmp_path: Path, qemu_img: str, qemu_io: str) -> Iterator[Env]:
    e = Env(tmp_path, qemu_img, qemu_io)
    try:
        yield e
    finally:
        if e.vm.proc.alive():
            e.finish()


def test_incorrect_parameters_single_file(env: Env) -> None:
    opts = env.hd_opts(0)
    env.add(**opts)
    original_graph = env.graph()
    env.reopen(opts)
    env.reopen(opts, {"file": "hd0-file"})
    env.reopen(opts, {"node-name": "not-found"},
               "Failed to find node with node-name='not-found'")
    env.reopen(opts, {"node-name": ""}, "Failed to find node with node-name=''")
    env.reopen(opts, {"node-name": None},
               "Invalid parameter type for 'node-name', expected: string")
    env.reopen(opts, {"driver": "raw"}, "Cannot change the option 'driver'")
    env.reopen(opts, {"driver": ""}, "Invalid parameter ''")
    env.reopen(opts, {"driver": None}, "Invalid parameter type for 'driver', expected: string")
    env.reopen(opts, {"file": "not-found"}, "Cannot find device='' nor node-name='not-found'")
    env.reopen(opts, {"file": ""}, "Cannot find device='' nor node-name=''")
    env.reopen(opts, {"file": None}, "Invalid parameter type for 'file', expected: BlockdevRef")
    env.reopen(opts, {"file.node-name": "newname"}, "Cannot change the option 'node-name'")
    env.reopen(opts, {"file.driver": "host_device"}, "Cannot change the option 'driver'")
    env.reopen(opts, {"file.filename": env.hd_path[1]}, "Cannot change the option 'filename'")
    env.reopen(opts, {"file.aio": "native"}, "Cannot change the option 'aio'")
    env.reopen(opts, {"file.locking": "off"}, "Cannot change the option 'locking'")
    env.reopen(opts, {"file.filename": None},
               "Invalid parameter type for 'file.filename', expected: string")
    del opts["node-name"]
    env.reopen(opts, {}, "node-name not specified")
    assert env.graph() == original_graph
    env.delete("hd0")


def test_incorrect_parameters_backing_file(env: Env) -> None:
    opts = env.hd_opts(1)
    env.add(**opts)
    original_graph = env.graph()
    env.reopen(opts, {}, "backing is missing for 'hd1'")
    backing_node_name = None
    for node in json.loads(original_graph)["return"]:
        if node["drv"] == "qcow2" and node["file"] == env.hd_path[0]:
            backing_node_name = node["node-name"]
    assert backing_node_name is not None
    env.reopen(opts, {"backing": backing_node_name})
    env.reopen(opts, {"backing": "not-found"}, "Cannot find device='' nor node-name='not-found'")
    env.reopen(opts, {"backing": ""}, "Cannot find device='' nor node-name=''")
    opts["backing"] = {"driver": "qcow2",
                       "file": {"driver": "file", "filename": env.hd_path[0]}}
    env.reopen(opts)
    env.reopen(opts, {"backing.node-name": "newname"}, "Cannot change the option 'node-name'")
    env.reopen(opts, {"backing.driver": "raw"}, "Cannot change the option 'driver'")
    env.reopen(opts, {"backing.file.node-name": "newname"},
               "Cannot change the option 'node-name'")
    env.reopen(opts, {"backing.file.driver": "host_device"},
               "Cannot change the option 'driver'")
    assert env.graph() == original_graph
    env.delete("hd1")


def test_reopen(env: Env) -> None:
    supports_direct = "O_DIRECT" not in subprocess.run(
        [env.qemu_io, "-f", "raw", "-t", "none", "-c", "quit", env.hd_path[0]],
        capture_output=True, text=True).stdout
    opts = env.hd_opts(1)
    opts["backing"] = env.hd_opts(0)
    env.add(**opts)
    original_graph = env.graph()
    env.reopen(opts)

    def node(name: str) -> dict[str, Any]:
        n = env.get_node(name)
        assert n is not None
        return n

    assert node("hd1")["ro"] is False
    env.reopen(opts, {"read-only": True})
    assert node("hd1")["ro"] is True
    env.reopen(opts)
    assert node("hd1")["ro"] is False

    assert node("hd1")["cache"] == {"writeback": True, "direct": False, "no-flush": False}
    env.reopen(opts, {"cache": {"direct": supports_direct, "no-flush": True}})
    assert node("hd1")["cache"] == {"writeback": True, "direct": supports_direct,
                                    "no-flush": True}
    env.reopen(opts)
    assert node("hd1")["cache"] == {"writeback": True, "direct": False, "no-flush": False}

    assert node("hd1")["detect_zeroes"] == "off"
    env.reopen(opts, {"detect-zeroes": "on"})
    assert node("hd1")["detect_zeroes"] == "on"
    env.reopen(opts, {"detect-zeroes": "unmap"},
               "setting detect-zeroes to unmap is not allowed "
               "without setting discard operation to unmap")
    assert node("hd1")["detect_zeroes"] == "on"
    env.reopen(opts, {"detect-zeroes": "unmap", "discard": "unmap"})
    assert node("hd1")["detect_zeroes"] == "unmap"
    env.reopen(opts)
    assert node("hd1")["detect_zeroes"] == "off"

    env.reopen(opts, {"force-share": True}, "Cannot change the option 'force-share'")

    env.reopen(opts, {"l2-cache-entry-size": 128 * 1024},
               "L2 cache entry size must be a power of two between 512 and the cluster "
               "size (65536)")
    env.reopen(opts, {"l2-cache-size": 1024 * 1024, "cache-size": 512 * 1024},
               "l2-cache-size may not exceed cache-size")
    env.reopen(opts, {"l2-cache-size": 4 * 1024 * 1024,
                      "refcount-cache-size": 4 * 1024 * 1024,
                      "l2-cache-entry-size": 32 * 1024})
    env.reopen(opts, {"pass-discard-request": True})
    assert env.graph() == original_graph

    del opts["file"]["node-name"]
    del opts["backing"]["node-name"]
    del opts["backing"]["file"]["node-name"]
    env.reopen(opts)
    assert env.graph() == original_graph

    env.reopen(opts, {"backing": None})
    assert "backing-image" not in node("hd1")["image"]

    env.add(**env.hd_opts(0))
    env.reopen(opts, {"backing": "hd0"})
    assert node("hd1")["image"]["backing-image"]["filename"] == env.hd_path[0]

    env.reopen(env.hd_opts(0), {"read-only": True})
    assert env.graph() == original_graph

    env.reopen(opts, {}, "Cannot change the option 'backing.driver'")
    env.delete("hd0", "Node 'hd0' is busy: node is used as backing hd of 'hd1'")
    env.delete("hd1")
    env.delete("hd0")


def test_reopen_raw(env: Env) -> None:
    opts = {"driver": "raw", "node-name": "hd0",
            "file": {"driver": "file", "filename": env.hd_path[0], "node-name": "hd0-file"}}
    env.img("create", "-f", "raw", env.hd_path[0], "2M")
    env.io("-f", "raw", "-c", "write -P 0xa0  0 1M", env.hd_path[0])
    env.io("-f", "raw", "-c", "write -P 0xa1 1M 1M", env.hd_path[0])
    env.add(**opts)
    env.run_qemu_io("hd0", "read -P 0xa0  0 1M")
    env.reopen(opts, {"offset": 1024 * 1024})
    env.run_qemu_io("hd0", "read -P 0xa1  0 1M")
    env.reopen(opts)
    env.run_qemu_io("hd0", "read -P 0xa0  0 1M")
    env.delete("hd0")


def test_reset_default_values(env: Env) -> None:
    opts: dict[str, Any] = {
        "driver": "qcow2", "node-name": "hd0",
        "file": {"driver": "file", "filename": env.hd_path[0],
                 "x-check-cache-dropped": True, "locking": "off", "node-name": "hd0-file"}}
    env.add(**opts)
    env.reopen(opts, {"file.x-check-cache-dropped": False})
    del opts["file"]["x-check-cache-dropped"]
    env.reopen(opts)
    env.reopen(opts, {"file.locking": "on"}, "Cannot change the option 'locking'")
    del opts["file"]["locking"]
    env.reopen(opts, {}, "Option 'locking' cannot be reset to its default value")
    env.reopen(opts, {"file.locking": "off"})
    env.delete("hd0")


def test_io_with_graph_changes(env: Env) -> None:
    opts = []
    for i in range(3):
        opts.append(env.hd_opts(i))
        opts[i]["backing"] = None
        env.add(**opts[i])
    env.run_qemu_io("hd0", "read -P 0xa0  0 1M")
    env.run_qemu_io("hd0", "read -P 0    1M 1M")
    env.run_qemu_io("hd0", "read -P 0    2M 1M")
    env.reopen(opts[0], {"backing": "hd1"})
    env.run_qemu_io("hd0", "read -P 0xa0  0 1M")
    env.run_qemu_io("hd0", "read -P 0xa1 1M 1M")
    env.run_qemu_io("hd0", "read -P 0    2M 1M")
    env.reopen(opts[2], {"backing": "hd1"})
    env.run_qemu_io("hd2", "read -P 0     0 1M")
    env.run_qemu_io("hd2", "read -P 0xa1 1M 1M")
    env.run_qemu_io("hd2", "read -P 0xa2 2M 1M")
    env.reopen(opts[0], {"backing": "hd2"})
    env.run_qemu_io("hd0", "read -P 0xa0  0 1M")
    env.run_qemu_io("hd0", "read -P 0xa1 1M 1M")
    env.run_qemu_io("hd0", "read -P 0xa2 2M 1M")
    env.reopen(opts[2], {"backing": None})
    env.run_qemu_io("hd0", "read -P 0xa0  0 1M")
    env.run_qemu_io("hd0", "read -P 0    1M 1M")
    env.run_qemu_io("hd0", "read -P 0xa2 2M 1M")
    env.reopen(opts[1], {"backing": "hd2"})
    env.reopen(opts[0], {"backing": "hd1"})
    env.run_qemu_io("hd0", "read -P 0xa0  0 1M")
    env.run_qemu_io("hd0", "read -P 0xa1 1M 1M")
    env.run_qemu_io("hd0", "read -P 0xa2 2M 1M")
    env.reopen(opts[2], {"backing": "hd1"},
               "Making 'hd1' a backing child of 'hd2' would create a cycle")
    env.reopen(opts[0], {"backing": "hd2"})
    env.run_qemu_io("hd1", "read -P 0     0 1M")
    env.run_qemu_io("hd1", "read -P 0xa1 1M 1M")
    env.run_qemu_io("hd1", "read -P 0xa2 2M 1M")
    env.reopen(opts[2], {"backing": "hd1"},
               "Making 'hd1' a backing child of 'hd2' would create a cycle")
    env.reopen(opts[2], {"file": "hd0-file"},
               "Permission conflict on node 'hd0-file': permissions 'write, resize' are both "
               "required by node 'hd0' (uses node 'hd0-file' as 'file' child) and unshared "
               "by node 'hd2' (uses node 'hd0-file' as 'file' child).")
    env.delete("hd2", "Node 'hd2' is busy: node is used as backing hd of 'hd0'")
    env.reopen(opts[1], {"backing": None})
    env.run_qemu_io("hd1", "read -P 0     0 1M")
    env.run_qemu_io("hd1", "read -P 0xa1 1M 1M")
    env.run_qemu_io("hd1", "read -P 0    2M 1M")
    del opts[1]["backing"]
    env.reopen(opts[1], {}, "backing is missing for 'hd1'")
    env.run_qemu_io("hd1", "read -P 0     0 1M")
    env.run_qemu_io("hd1", "read -P 0xa1 1M 1M")
    env.run_qemu_io("hd1", "read -P 0    2M 1M")
    env.finish()


def test_graph_cycles_without_blkverify(env: Env) -> None:
    opts = []
    for i in range(3):
        opts.append(env.hd_opts(i))
        opts[i]["backing"] = None
        env.add(**opts[i])
    env.reopen(opts[0], {"backing": "hd1"})
    env.reopen(opts[2], {"backing": "hd1"})
    env.reopen(opts[1], {"backing": "hd2"},
               "Making 'hd2' a backing child of 'hd1' would create a cycle")
    env.reopen(opts[2], {"backing": "hd0"})
    env.reopen(opts[1], {"backing": "hd2"},
               "Making 'hd2' a backing child of 'hd1' would create a cycle")
    env.reopen(opts[1], {"backing": "hd1"},
               "Making 'hd1' a backing child of 'hd1' would create a cycle")
    env.reopen(opts[0])
    env.reopen(opts[2])


def test_replace_file(env: Env) -> None:
    env.img("create", "-f", "raw", env.hd_path[0], "10k")
    env.img("create", "-f", "raw", env.hd_path[1], "10k")
    env.add(driver="file", **{"node-name": "hd0-file"}, filename=env.hd_path[0])
    env.add(driver="file", **{"node-name": "hd1-file"}, filename=env.hd_path[1])
    opts = {"driver": "raw", "node-name": "hd", "file": "hd0-file"}
    env.add(**opts)
    env.run_qemu_io("hd", "read  -P 0 0 10k")
    env.run_qemu_io("hd", "write -P 0xa0 0 10k")
    env.reopen(opts, {"file": "hd1-file"})
    env.run_qemu_io("hd", "read  -P 0 0 10k")
    env.run_qemu_io("hd", "write -P 0xa1 0 10k")
    env.reopen(opts, {"file": "hd0-file"})
    env.run_qemu_io("hd", "read  -P 0xa0 0 10k")
    env.reopen(opts, {"file": "hd1-file"})
    env.run_qemu_io("hd", "read  -P 0xa1 0 10k")
    env.finish()


def test_misc_drivers_null_and_file(env: Env) -> None:
    opts: dict[str, Any] = {"driver": "null-co", "node-name": "root", "size": 1024}
    env.add(**opts)
    env.reopen(opts, {"size": (1 << 30)}, "Cannot change the option 'size'")
    del opts["size"]
    env.reopen(opts, {}, "Option 'size' cannot be reset to its default value")
    env.delete("root")

    opts = env.hd_opts(0)
    opts["file"]["locking"] = "on"
    env.add(**opts)
    del opts["file"]["locking"]
    env.reopen(opts, {"file.locking": "on"})
    env.reopen(opts, {"file.locking": "off"}, "Cannot change the option 'locking'")
    env.reopen(opts, {}, "Option 'locking' cannot be reset to its default value")
    opts = opts["file"]
    env.reopen(opts, {"locking": "on"})
    env.reopen(opts, {"locking": "off"}, "Cannot change the option 'locking'")
    env.reopen(opts, {}, "Option 'locking' cannot be reset to its default value")
    env.delete("hd0")


def test_missing_backing_options_1(env: Env) -> None:
    env.add(**env.hd_opts(2))
    opts = env.hd_opts(0)
    env.add(**opts)
    env.reopen(opts)
    env.reopen(opts, {"backing": "hd2"})
    env.reopen(opts, {}, "backing is missing for 'hd0'")
    env.delete("hd2", "Node 'hd2' is busy: node is used as backing hd of 'hd0'")
    env.reopen(opts, {"backing": None})
    env.reopen(opts)
    env.delete("hd0")
    env.delete("hd2")


def test_missing_backing_options_2(env: Env) -> None:
    opts = env.hd_opts(1)
    env.add(**opts)
    env.reopen(opts, {}, "backing is missing for 'hd1'")
    env.reopen(opts, {"backing": None})
    env.reopen(opts, {}, "backing is missing for 'hd1'")
    env.delete("hd1")


def test_backing_reference(env: Env) -> None:
    opts = env.hd_opts(0)
    opts["backing"] = env.hd_opts(1)
    opts["backing"]["backing"] = env.hd_opts(2)
    opts["detect-zeroes"] = "on"
    opts["backing"]["detect-zeroes"] = "on"
    opts["backing"]["backing"]["detect-zeroes"] = "on"
    env.add(**opts)
    env.reopen({"driver": "qcow2", "node-name": "hd0", "file": "hd0-file", "backing": "hd1"})
    for name, want in (("hd0", "off"), ("hd1", "on"), ("hd2", "on")):
        n = env.get_node(name)
        assert n is not None and n["detect_zeroes"] == want


def test_graph_cycles(env: Env) -> None:
    opts = []
    for i in range(3):
        opts.append(env.hd_opts(i))
        opts[i]["backing"] = None
        env.add(**opts[i])
    env.reopen(opts[0], {"backing": "hd1"})
    env.reopen(opts[2], {"backing": "hd1"})
    env.reopen(opts[1], {"backing": "hd2"},
               "Making 'hd2' a backing child of 'hd1' would create a cycle")
    env.reopen(opts[2], {"backing": "hd0"})
    env.reopen(opts[1], {"backing": "hd2"},
               "Making 'hd2' a backing child of 'hd1' would create a cycle")
    env.reopen(opts[1], {"backing": "hd1"},
               "Making 'hd1' a backing child of 'hd1' would create a cycle")
    env.reopen(opts[0])
    env.reopen(opts[2])
    bvopts = {"driver": "blkverify", "node-name": "bv", "test": "hd0", "raw": "hd1"}
    env.add(**bvopts)
    env.reopen(bvopts, {}, "Block format 'blkverify' used by node 'bv' does not support "
               "reopening files")
    env.reopen(opts[0], {"backing": "bv"},
               "Making 'bv' a backing child of 'hd0' would create a cycle")
    env.delete("bv")


def test_insert_throttle_filter(env: Env) -> None:
    hd0_opts = env.hd_opts(0)
    env.add(**hd0_opts)
    env.ok(env.vm.qmp("object-add", **{"qom-type": "throttle-group", "id": "group0",
                                        "limits": {"iops-total": 1000}}))
    env.add(driver="throttle", **{"node-name": "throttle0", "throttle-group": "group0"},
            file="hd0-file")
    env.reopen(hd0_opts, {"file": "throttle0"})
    env.reopen(hd0_opts, {"file": "hd0-file"})


def test_insert_compress_filter(env: Env) -> None:
    opts = {"driver": "raw", "node-name": "hd", "file": env.hd_opts(0)}
    env.add(**opts)
    env.add(driver="compress", **{"node-name": "compress0"}, file="hd0")
    env.run_qemu_io("hd", "write -z -u 0 128k")
    env.run_qemu_io("hd", "write -P 0xa0 0 64k")
    env.reopen(opts, {"file": "compress0"})
    env.run_qemu_io("hd", "write -P 0xa1 64k 64k")
    env.reopen(opts, {"file": "hd0"})
    env.run_qemu_io("hd", "write -P 0xa2 128k 64k")
    env.run_qemu_io("hd", "read -P 0xa0    0 64k")
    env.run_qemu_io("hd", "read -P 0xa1  64k 64k")
    env.run_qemu_io("hd", "read -P 0xa2 128k 64k")
    env.finish()
    out = subprocess.run(
        [env.qemu_io, "-f", "raw", "-c", "read -P 0x80 0x40000 1", "-c",
         "read -P 0x40 0x40008 1", "-c", "read -P 0x80 0x40010 1", env.hd_path[0]],
        capture_output=True, text=True, check=True).stdout
    assert "Pattern verification failed" not in out
    assert out.count("read 1/1 bytes") == 3


def test_misc_drivers(env: Env) -> None:
    for i in range(3):
        opts = env.hd_opts(i)
        opts["backing"] = None
        env.add(**opts)
    opts = {"driver": "quorum", "node-name": "quorum0", "children": ["hd0", "hd1", "hd2"],
            "vote-threshold": 2}
    env.add(**opts)
    env.reopen(opts, {}, "Block format 'quorum' used by node 'quorum0' does not support "
               "reopening files")
    env.reopen(env.hd_opts(0), {"backing": "quorum0"},
               "Making 'quorum0' a backing child of 'hd0' would create a cycle")
    env.delete("quorum0")
    for i in range(3):
        env.delete(f"hd{i}")

    opts = {"driver": "blkdebug", "node-name": "bd", "config": "/dev/null",
            "image": env.hd_opts(0)}
    env.add(**opts)
    env.reopen(opts)
    env.reopen(opts, {"image": "hd1"}, "Cannot change the option 'image'")
    env.reopen(opts, {"align": 33554432}, "Cannot change the option 'align'")
    env.reopen(opts, {"config": "/non/existent"}, "Cannot change the option 'config'")
    del opts["config"]
    env.reopen(opts, {}, "Option 'config' cannot be reset to its default value")
    env.delete("bd")

    for gid, iops in (("group0", 1000), ("group1", 2000)):
        env.ok(env.vm.qmp("object-add", **{"qom-type": "throttle-group", "id": gid,
                                            "limits": {"iops-total": iops}}))
    opts = {"driver": "throttle", "node-name": "throttle0", "throttle-group": "group0",
            "file": env.hd_opts(0)}
    env.add(**opts)
    env.reopen(opts)
    env.reopen(opts, {"file": "hd0"})
    env.reopen(opts, {"throttle-group": "notfound"}, "Throttle group 'notfound' does not exist")
    env.reopen(opts, {"throttle-group": "group1"})
    env.err(env.vm.qmp("object-del", id="group1"), "object 'group1' is in use, can not be deleted")
    env.reopen(opts)
    env.err(env.vm.qmp("object-del", id="group0"), "object 'group0' is in use, can not be deleted")
    env.ok(env.vm.qmp("object-del", id="group1"))
    env.delete("throttle0")
    env.ok(env.vm.qmp("object-del", id="group0"))
