"""The iotests harness (iotests/iotests.py) keeps QEMU 7.2's iotests semantics.

Everything runs against a real blockd started by ``iotests.VM`` and the real
``blockd-img``/``blockd-io`` tools: key conversion, event matching and caching,
``run_job``'s logged transcript, the QMPTestCase job helpers, log collection
after shutdown, the output filters and the ``check`` runner's report format.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import types
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IOTESTS_DIR = Path(__file__).resolve().parent.parent / "iotests"
if str(IOTESTS_DIR) not in sys.path:
    # Appended, not prepended: iotests/ also holds a conftest.py.
    sys.path.append(str(IOTESTS_DIR))

import iotests  # noqa: E402

TS = {"microseconds": "USECS", "seconds": "SECS"}


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(iotests, "test_dir", str(tmp_path))
    monkeypatch.setattr(iotests, "imgfmt", "qcow2")
    monkeypatch.setattr(iotests, "vm_kind", "blockd")
    return tmp_path


@pytest.fixture
def vm(scratch: Path) -> Iterator[iotests.VM]:
    machine = iotests.VM()
    machine.launch()
    try:
        yield machine
    finally:
        machine.shutdown()


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """What iotests.log() writes while the test runs (as activate_logging() would)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(message)s"))
    lg = iotests.test_logger
    saved = (lg.handlers[:], lg.level, lg.propagate)
    lg.handlers, lg.propagate = [handler], False
    lg.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        lg.handlers, lg.level, lg.propagate = saved


def make_chain(d: Path) -> tuple[str, str]:
    """base (64k of 0x11 at 0) <- top, both qcow2, made with blockd-img/blockd-io."""
    base, top = str(d / "base.qcow2"), str(d / "top.qcow2")
    iotests.qemu_img("create", "-f", "qcow2", base, "1M")
    iotests.qemu_io("-c", "write -P 0x11 0 64k", base)
    iotests.qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    return base, top


def add_top(vm: iotests.VM, top: str) -> None:
    opts: dict[str, Any] = {"driver": "qcow2", "node-name": "top",
                            "file": {"driver": "file", "filename": top}}
    res = vm.qmp("blockdev-add", conv_keys=False, **opts)
    assert res == {"return": {}}


# --- QMP arguments ---------------------------------------------------------------

def test_conv_keys_turns_underscores_into_dashes(vm: iotests.VM) -> None:
    assert vm.qmp("blockdev-add", driver="null-co", node_name="n0") == {"return": {}}
    assert vm.node_info("n0") is not None
    # conv_keys=False sends the keys as given: QEMU's error for the unknown key.
    res = vm.qmp("blockdev-add", conv_keys=False, driver="null-co", node_name="n1")
    assert res == {"error": {"class": "GenericError",
                             "desc": "Parameter 'node_name' is unexpected"}}
    # args_dict is sent untouched (no conversion), like QEMU's qmp(cmd, args_dict).
    res = vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n2"})
    assert res == {"return": {}}
    assert vm.cmd("query-named-block-nodes", flat=True)[0]["node-name"] in ("n0", "n2")
    with pytest.raises(iotests.QMPCommandError) as exc:
        vm.cmd("blockdev-del", node_name="nope")
    assert exc.value.error_class == "GenericError"


def test_qmp_log_logs_sorted_command_and_reply(vm: iotests.VM, logged: io.StringIO) -> None:
    vm.qmp_log("blockdev-add", driver="null-co", node_name="n0", size=4096)
    assert logged.getvalue().splitlines() == [
        '{"execute": "blockdev-add", "arguments": '
        '{"driver": "null-co", "node-name": "n0", "size": 4096}}',
        '{"return": {}}',
    ]


# --- events ----------------------------------------------------------------------

def test_event_wait_matches_sub_dicts_and_caches_the_rest(scratch: Path,
                                                           vm: iotests.VM) -> None:
    _, top = make_chain(scratch)
    add_top(vm, top)
    res = vm.qmp("block-stream", job_id="s0", device="top", auto_dismiss=False)
    assert res == {"return": {}}
    # Wait for a late status: every earlier event stays cached, in order.
    ev = vm.event_wait("JOB_STATUS_CHANGE", match={"data": {"status": "concluded"}})
    assert ev is not None and ev["data"] == {"id": "s0", "status": "concluded"}
    cached = vm.get_qmp_events()
    names = [(e["event"], e["data"].get("status")) for e in cached]
    assert names[:3] == [("JOB_STATUS_CHANGE", "created"), ("JOB_STATUS_CHANGE", "running"),
                         ("JOB_STATUS_CHANGE", "waiting")]
    assert ("BLOCK_JOB_COMPLETED", None) in names
    assert all(e["event"] != "JOB_STATUS_CHANGE" or e["data"]["status"] != "concluded"
               for e in cached)
    # None in a match is a wildcard; a non-dict match compares by equality.
    assert iotests.VM.event_match({"data": {"id": "s0"}}, {"data": None})
    assert iotests.VM.event_match({"data": {"id": "s0"}}, {"data": {"id": "s0"}})
    assert not iotests.VM.event_match({"data": {"id": "s0"}}, {"data": {"id": "s1"}})
    assert not iotests.VM.event_match({"data": {"id": "s0"}}, {"data": {"type": "x"}})
    assert iotests.VM.event_match({"data": {"n": 3}}, {"data": {"n": 3}})
    vm.qmp("job-dismiss", id="s0")


def test_events_wait_times_out_with_an_error(vm: iotests.VM) -> None:
    # QEMU's events_wait raises on timeout rather than returning None.
    with pytest.raises(TimeoutError):
        vm.events_wait([("BLOCK_JOB_COMPLETED", None)], timeout=0.2)


# --- jobs ------------------------------------------------------------------------

def test_run_job_finalizes_dismisses_and_logs_like_qemu(scratch: Path, vm: iotests.VM,
                                                       logged: io.StringIO) -> None:
    _, top = make_chain(scratch)
    add_top(vm, top)
    res = vm.qmp("block-stream", job_id="s0", device="top", auto_finalize=False,
                 auto_dismiss=False)
    assert res == {"return": {}}
    assert vm.run_job("s0", auto_finalize=False, auto_dismiss=False) is None
    completed = {"device": "s0", "len": 1048576, "offset": 1048576, "speed": 0,
                 "type": "stream"}
    assert logged.getvalue().splitlines() == [
        '{"execute": "job-finalize", "arguments": {"id": "s0"}}',
        '{"return": {}}',
        json.dumps({"data": {"id": "s0", "type": "stream"}, "event": "BLOCK_JOB_PENDING",
                    "timestamp": TS}, sort_keys=True),
        json.dumps({"data": completed, "event": "BLOCK_JOB_COMPLETED", "timestamp": TS},
                   sort_keys=True),
        '{"execute": "job-dismiss", "arguments": {"id": "s0"}}',
        '{"return": {}}',
    ]
    assert vm.qmp("query-jobs") == {"return": []}


def test_run_job_cancel_at_pending(scratch: Path, vm: iotests.VM,
                                   logged: io.StringIO) -> None:
    _, top = make_chain(scratch)
    add_top(vm, top)
    vm.qmp("block-stream", job_id="s0", device="top", auto_finalize=False)
    assert vm.run_job("s0", auto_finalize=False, auto_dismiss=True, cancel=True) is None
    lines = logged.getvalue().splitlines()
    assert lines[0] == '{"execute": "job-cancel", "arguments": {"id": "s0"}}'
    assert '"event": "BLOCK_JOB_CANCELLED"' in lines[-1]


def _case(vm: iotests.VM, body: Any) -> unittest.TestResult:
    """Run ``body(self)`` as a QMPTestCase method against ``vm``."""
    class Case(iotests.QMPTestCase):
        def runTest(self) -> None:
            self.vm = vm
            body(self)
    result = unittest.TestResult()
    Case().run(result)
    return result


def test_wait_until_completed_checks_device_offset_and_no_jobs(scratch: Path,
                                                               vm: iotests.VM) -> None:
    _, top = make_chain(scratch)
    add_top(vm, top)
    vm.qmp("block-stream", job_id="s0", device="top")

    def body(tc: iotests.QMPTestCase) -> None:
        ev = tc.wait_until_completed(drive="s0")
        tc.assert_qmp(ev, "data/offset", 1048576)
        tc.assert_no_active_block_jobs()
    res = _case(vm, body)
    assert not res.failures and not res.errors
    # Another job's events fail the case (its JOB_STATUS_CHANGE comes first).
    vm.qmp("blockdev-del", node_name="top")
    add_top(vm, top)
    vm.qmp("block-stream", job_id="s1", device="top")
    res = _case(vm, lambda tc: tc.wait_until_completed(drive="s0"))
    assert len(res.failures) == 1 and '"data/id" is "s1"' in res.failures[0][1]


def test_cancel_and_wait(scratch: Path, vm: iotests.VM) -> None:
    _, top = make_chain(scratch)
    add_top(vm, top)
    vm.qmp("block-stream", job_id="s0", device="top", speed=1)  # 1 byte/s: still running

    def body(tc: iotests.QMPTestCase) -> None:
        ev = tc.cancel_and_wait(drive="s0")
        assert ev is not None
        tc.assert_qmp(ev, "event", ["BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED"])
    res = _case(vm, body)
    assert not res.failures and not res.errors, res.failures + res.errors


def test_assert_qmp_paths_and_alternatives(vm: iotests.VM) -> None:
    def body(tc: iotests.QMPTestCase) -> None:
        d = {"return": [{"a": {"b": 1}}, {"c": []}]}
        tc.assert_qmp(d, "return[0]/a/b", 1)
        tc.assert_qmp(d, "return[0]/a/b", [0, 1])   # a non-empty list means "any of"
        tc.assert_qmp(d, "return[1]/c", [])         # [] is a value
        tc.assert_qmp_absent(d, "return[0]/a/x")
        tc.assert_qmp_absent(d, "return[5]")
        with pytest.raises(AssertionError):
            tc.assert_qmp(d, "return[0]/a/b", 2)
        with pytest.raises(AssertionError):
            tc.assert_qmp_absent(d, "return[0]/a")
    res = _case(vm, body)
    assert not res.failures and not res.errors, res.failures + res.errors


# --- process, log and tools --------------------------------------------------------

def test_hmp_qemu_io_output_goes_to_the_log(scratch: Path) -> None:
    base, _ = make_chain(scratch)
    machine = iotests.VM()
    machine.launch()
    assert machine.is_running()
    opts: dict[str, Any] = {"driver": "qcow2", "node-name": "b",
                            "file": {"driver": "file", "filename": base}}
    machine.qmp("blockdev-add", conv_keys=False, **opts)
    assert machine.hmp_qemu_io("b", "read -P 0x11 0 64k") == {"return": ""}
    assert machine.hmp_qemu_io("b", "read -P 0x22 0 512") == {"return": ""}
    machine.shutdown()
    machine.shutdown()  # a second shutdown is a no-op, as QEMU's
    assert not machine.is_running() and machine.exitcode() == 0
    log = machine.get_log() or ""
    assert log.startswith("read 65536/65536 bytes at offset 0\n")
    assert "Pattern verification failed at offset 0, 512 bytes\n" in log


def test_command_line_builders(scratch: Path) -> None:
    machine = iotests.VM()
    assert machine.add_object("throttle-group,id=g0,x-iops-total=100") is machine
    machine.add_blockdev("driver=null-co,node-name=n0,size=4096")
    machine.add_blockdev({"driver": "null-co", "node-name": "n1"})
    with pytest.raises(NotImplementedError):
        machine.add_drive(None)  # blockd, like qemu-storage-daemon, has no -drive
    machine.launch()
    try:
        assert machine.node_info("n0") is not None and machine.node_info("n1") is not None
        assert machine.node_info("n2") is None
        objects = machine.cmd("qom-list", path="/objects")
        assert "g0" in [o["name"] for o in objects]
        assert machine.get_pid() is not None
    finally:
        machine.shutdown()
    assert machine.get_pid() is None


def test_launch_failure_reports_the_log(scratch: Path) -> None:
    machine = iotests.VM()
    machine.add_args("--object", "no-such-type,id=x")
    with pytest.raises(iotests.VMLaunchFailure) as exc:
        machine.launch()
    assert exc.value.exitcode not in (None, 0)
    assert "no-such-type" in exc.value.output
    assert not machine.is_running()


def test_tool_results_are_text_and_completed_process(scratch: Path) -> None:
    img = str(scratch / "a.qcow2")
    created = iotests.qemu_img("create", "-f", "qcow2", img, "1M")
    assert created.returncode == 0 and "Formatting" in created
    out = iotests.qemu_io("-c", "read -P 0 0 512", img)
    assert out.startswith("read 512/512 bytes at offset 0")   # QEMU 6.0: a string
    assert out.stdout == str(out)                             # QEMU 7.2: CompletedProcess
    with pytest.raises(iotests.VerboseProcessError) as exc:
        iotests.qemu_io("-c", "read 0 512", str(scratch / "missing.qcow2"))
    assert "missing.qcow2" in str(exc.value)
    failed = iotests.qemu_io("-c", "read 0 512", str(scratch / "missing.qcow2"), check=False)
    assert failed.returncode == 1


def test_tool_fork_server_runs_are_the_executables_runs(scratch: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Same output and exit status through the fork server as from the executables."""
    img = str(scratch / "f.qcow2")
    runs: list[tuple[str, ...]] = [
        ("img", "create", "-f", "qcow2", img, "1M"),
        ("io", "-c", "write -P 0xa5 0 64k", img),
        ("io", "-c", "read -P 0xa5 0 64k", "-c", "read -P 0 64k 64k", img),
        ("io", "-c", "read -P 0x11 0 512", img),             # pattern failure, exit 1
        ("io", "-c", "read 0 512", str(scratch / "none")),   # open failure, exit 1
        ("img", "info", "--output=json", img),
        ("img", "check", img),
        ("img", "info", str(scratch / "none")),
        ("img", "create", "-f", "qcow2", img),               # usage error
    ]

    def run_all() -> list[tuple[int, str]]:
        out = []
        for tool, *args in runs:
            fn = iotests.qemu_img if tool == "img" else iotests.qemu_io
            res = fn(*args, check=False)
            out.append((res.returncode, iotests.filter_qemu_io(str(res))))
        return out
    monkeypatch.setenv("IOTESTS_TOOL_FORKSERVER", "0")
    direct = run_all()
    monkeypatch.setenv("IOTESTS_TOOL_FORKSERVER", "1")
    assert iotests._forkserver_tool(iotests.qemu_io_prog) == "io"
    forked = run_all()
    assert forked == direct
    assert [rc for rc, _ in direct] == [0, 0, 0, 1, 1, 0, 0, 1, 1]


def test_filters(scratch: Path) -> None:
    rate = "64 KiB, 1 ops; 00.00 sec (633.521 MiB/sec and 10136.3337 ops/sec)"
    assert iotests.filter_qemu_io(f"read 65536/65536 bytes at offset 0\n{rate}\r\n") == \
        "read 65536/65536 bytes at offset 0\n" \
        "64 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)\n"
    ev = {"event": "X", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}
    assert iotests.filter_qmp_event(ev)["timestamp"] == TS
    assert ev["timestamp"] == {"seconds": 1, "microseconds": 2}   # the input is untouched
    path = os.path.join(iotests.test_dir, f"{os.getpid()}-img")
    assert iotests.filter_testfiles(f"{path} and {iotests.test_dir}/x") == \
        "TEST_DIR/PID-img and TEST_DIR/x"
    assert iotests.filter_qmp_testfiles({"a": [path]}) == {"a": ["TEST_DIR/PID-img"]}
    assert iotests.filter_generated_node_ids("node #block123 x") == "node NODE_NAME x"
    assert iotests.filter_imgfmt("a qcow2 b") == "a IMGFMT b"


def test_skip_if_unsupported_uses_blockds_drivers(vm: iotests.VM) -> None:
    assert {"qcow2", "raw", "quorum", "throttle", "blkverify"} <= set(
        iotests.supported_formats())
    ran: list[str] = []

    class Case(iotests.QMPTestCase):
        @iotests.skip_if_unsupported(["quorum"])
        def test_have(self) -> None:
            ran.append("have")

        @iotests.skip_if_unsupported(["no-such-format"])
        def test_missing(self) -> None:
            ran.append("missing")
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(Case).run(result)
    assert ran == ["have"] and len(result.skipped) == 1


# --- check ---------------------------------------------------------------------------

def _load_check() -> types.ModuleType:
    loader = importlib.machinery.SourceFileLoader("iotests_check", str(IOTESTS_DIR / "check"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_check_lists_tests_and_formats_status_lines() -> None:
    out = subprocess.run([sys.executable, str(IOTESTS_DIR / "check"), "-n", "245"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "245\n"
    bad = subprocess.run([sys.executable, str(IOTESTS_DIR / "check"), "999"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "No such test: 999" in bad.stderr
    notrun = subprocess.run([sys.executable, str(IOTESTS_DIR / "check"), "-raw", "245"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert notrun[-3].startswith("245   not run    [")
    assert notrun[-3].endswith("not suitable for this image format: raw")
    assert notrun[-2:] == ["Not run: 245", "Passed all 0 iotests"]
    check = _load_check()
    assert "245" in check.list_tests()
    assert check.test_groups("245") == {"rw"}
    assert check.status_line("245", 5, "pass", "10:00:00", "10:00:31", 31.04) == \
        "245   pass       [10:00:00] [10:00:31]   31.0s"
    assert check.status_line("245", 5, "not run", "10:00:00", "10:00:00", 0.21,
                             "not suitable for this image format: raw") == \
        "245   not run    [10:00:00] [10:00:00]   0.2s                 not suitable for " \
        "this image format: raw"


# --- real QEMU as the VM ----------------------------------------------------------------

@pytest.mark.qemu
def test_qemu_vm_translates_x_blockdev_reopen(scratch: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import require_tool
    monkeypatch.setattr(iotests, "qemu_prog", require_tool("qemu-system-x86_64"))
    monkeypatch.setattr(iotests, "vm_kind", "qemu")
    img = str(scratch / "a.qcow2")
    iotests.qemu_img("create", "-f", "qcow2", img, "1M")
    machine = iotests.VM()
    machine.launch()
    try:
        opts: dict[str, Any] = {"driver": "qcow2", "node-name": "hd0",
                                "file": {"driver": "file", "filename": img}}
        assert machine.qmp("blockdev-add", conv_keys=False, **opts) == {"return": {}}
        assert machine.qmp("x-blockdev-reopen", conv_keys=False,
                           **{**opts, "read-only": True}) == {"return": {}}
        assert machine.node_info("hd0")["ro"] is True  # type: ignore[index]
        # 7.2's texts carry the list index; the harness reports 6.0's.
        res = machine.qmp("x-blockdev-reopen", conv_keys=False, **{**opts, "driver": None})
        assert res["error"]["desc"] == "Invalid parameter type for 'driver', expected: string"
        res = machine.qmp("x-blockdev-reopen", conv_keys=False, **{**opts, "driver": ""})
        assert res["error"]["desc"] == "Invalid parameter ''"
        # Texts that are the same in both versions pass through.
        res = machine.qmp("x-blockdev-reopen", conv_keys=False, **{**opts, "driver": "raw"})
        assert res["error"]["desc"] == "Cannot change the option 'driver'"
        assert machine.hmp_qemu_io("hd0", "read -P 0 0 512") == {"return": ""}
    finally:
        machine.shutdown()
    assert (machine.get_log() or "").count("read 512/512 bytes at offset 0") == 1
