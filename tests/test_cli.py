"""The qemu-storage-daemon command line: error texts against real QSD, pid
file, daemonize, signals, client-mode and stdio chardevs, pretty monitors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import BLOCKD, RawClient, start_blockd

# Arguments QSD rejects before serving; blockd must say the same (modulo its name).
BAD_COMMAND_LINES: list[list[str]] = [
    ["foo"],
    ["--bogus"],
    ["--pidfile"],
    ["--daemonize=1"],
    ["-x"],
    ["--chardev", "socket,id=m0"],
    ["--chardev", "socket,path=/tmp/blockd-cli-x.sock,server=on,wait=off"],
    ["--chardev", "socket,path=/tmp/blockd-cli-x.sock,server=maybe,id=m0"],
    ["--chardev", "socket,path=/tmp/blockd-cli-x.sock,server=on,wait=off,id=m0,bogus=1"],
    ["--chardev", "socket,path=/tmp/blockd-cli-x.sock,server=on,wait=off,id=1m"],
    ["--chardev", "bogus,id=m0"],
    ["--chardev", "id=m0"],
    ["--chardev", "socket,path=/nonexistent-dir/x.sock,id=m0"],
    ["--chardev", "stdio,id=m0", "--chardev", "stdio,id=m1"],
    ["--monitor", "chardev=nope"],
    ["--monitor", "foo=bar"],
    ["--chardev", "stdio,id=m0", "--monitor", "m0,mode=readline"],
    ["--chardev", "stdio,id=m0", "--monitor", "m0,pretty=x"],
    ["--chardev", "stdio,id=m0", "--monitor", "m0", "--monitor", "chardev=m0"],
    ["--object", "iothread"],
    ["--object", "bogus,id=x"],
    ["--object", "iothread,id=io0", "--object", "iothread,id=io0"],
    ["--object", "iothread,id=io0,poll-max-ns=x"],
    ["--object", '{"qom-type":"iothread"}'],
    ["--object", "{bad"],
    ["--blockdev", "driver=bogus,node-name=x"],
    ["--blockdev", '{"driver":"file"}'],
    ["--blockdev", "driver=null-co,node-name=a,read-only=maybe"],
    ["--blockdev", "driver=null-co,node-name=a,size=abc"],
    ["--blockdev", "{bad json"],
    ["--blockdev", '{"driver":"null-co"'],
    ["--blockdev", '{"a":1}{"b":2}'],
    ["--blockdev", "{}"],
    ["--pidfile", "/nonexistent/dir/pid"],
]


def wait_for(path: Path) -> None:
    """The pid file is written once start-up is complete, after the sockets."""
    deadline = time.monotonic() + 20
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def run(argv0: list[str], args: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [*argv0, *args], cwd=cwd, capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stderr


@pytest.mark.qemu
@pytest.mark.parametrize("args", BAD_COMMAND_LINES, ids=lambda a: " ".join(a)[:60])
def test_command_line_errors_match_qsd(args: list[str], tmp_path: Path, qsd: str) -> None:
    # By name, as users run it: getopt prints argv[0] verbatim.
    q_rc, q_err = run(["qemu-storage-daemon"], args, tmp_path)
    b_rc, b_err = run(BLOCKD, args, tmp_path)
    assert (b_rc, b_err.replace("blockd: ", "qemu-storage-daemon: ")) == (q_rc, q_err)
    assert b_rc == 1


def test_help_and_version(tmp_path: Path) -> None:
    rc, _ = run(BLOCKD, ["--help"], tmp_path)
    assert rc == 0
    out = subprocess.run([*BLOCKD, "-h"], capture_output=True, text=True).stdout
    assert out.startswith("Usage: blockd [options]")
    for opt in ("--blockdev", "--chardev", "--daemonize", "--monitor", "--object", "--pidfile"):
        assert opt in out
    out = subprocess.run([*BLOCKD, "-V"], capture_output=True, text=True).stdout
    assert out.startswith("blockd version 0.1.0 (emulating QEMU 7.2")


def test_console_script_matches_module(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("blockd")
    proc = subprocess.run([str(script), "foo"], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (1, "blockd: foo: Unexpected argument\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_shut_down_cleanly(tmp_path: Path, sig: int) -> None:
    pid = tmp_path / "pid"
    proc = start_blockd(tmp_path, "--pidfile", str(pid), monitors=2)
    wait_for(pid)
    assert pid.read_text() == f"{proc.proc.pid}\n"
    client = RawClient(proc.socket, negotiate=True)
    assert proc.stop(sig) == 0
    with pytest.raises((EOFError, ConnectionError)):
        client.line()
    assert not any(Path(p).exists() for p in proc.sockets)
    assert not pid.exists()


def test_pidfile_is_locked(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    first = start_blockd(tmp_path, "--pidfile", str(pid))
    wait_for(pid)
    rc, err = run(BLOCKD, ["--pidfile", str(pid)], tmp_path)
    assert rc == 1 and err.startswith("blockd: cannot create PID file: ")
    assert pid.read_text() == f"{first.proc.pid}\n"
    assert first.stop() == 0


def test_daemonize(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    pid = tmp_path / "d.pid"
    proc = subprocess.run(
        [*BLOCKD, "--daemonize", "--pidfile", str(pid),
         "--chardev", f"socket,path={sock},server=on,wait=off,id=m0", "--monitor", "m0"],
        capture_output=True, timeout=30,
    )
    # The parent returns only once the child is ready to serve.
    assert proc.returncode == 0 and proc.stderr == b""
    assert sock.exists()
    child = int(pid.read_text())
    assert child != os.getpid()
    client = RawClient(str(sock), negotiate=True)
    assert client.exchange(b'{"execute":"quit"}\n') == [b'{"return": {}}\r\n']
    deadline = time.monotonic() + 10
    while pid.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid.exists() and not sock.exists()


def test_daemonize_failure_reported_by_parent(tmp_path: Path) -> None:
    rc, err = run(BLOCKD, ["--daemonize", "--monitor", "chardev=nope"], tmp_path)
    assert rc == 1
    assert err == 'blockd: --monitor chardev=nope: chardev "nope" not found\n'


def test_client_mode_chardev(tmp_path: Path) -> None:
    """``server=off``: blockd connects out, as iotests' QemuStorageDaemon expects."""
    path = str(tmp_path / "harness.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(20)
    proc = subprocess.Popen(
        [*BLOCKD, "--chardev", f"socket,id=qmp-sock,path={path}", "--monitor", "qmp-sock"],
        stderr=subprocess.PIPE,
    )
    conn, _ = listener.accept()
    f = conn.makefile("rwb")
    assert json.loads(f.readline())["QMP"]["capabilities"] == ["oob"]
    f.write(b'{"execute":"qmp_capabilities"}\n{"execute":"query-version","id":1}\n')
    f.flush()
    assert f.readline() == b'{"return": {}}\r\n'
    assert b'"id": 1' in f.readline()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    conn.close()
    listener.close()


def test_wait_on_blocks_start_until_client(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    proc = subprocess.Popen(
        [*BLOCKD, "--chardev", f"socket,path={path},server=on,id=m0", "--monitor", "m0",
         "--pidfile", str(tmp_path / "pid")],
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert line == (f"blockd: --chardev socket,path={path},server=on,id=m0: info: QEMU "
                    f"waiting for connection on: disconnected:unix:{path},server=on\n")
    # Start-up (the pid file) waits for the first client.
    assert not (tmp_path / "pid").exists()
    client = RawClient(str(path), negotiate=True)
    client.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_stdio_monitor(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*BLOCKD, "--chardev", "stdio,id=m0", "--monitor", "m0"],
        input=b'{"execute":"qmp_capabilities"}\n{"execute":"query-version","id":2}\n'
              b'{"execute":"quit"}\n',
        capture_output=True, timeout=30,
    )
    lines = proc.stdout.split(b"\r\n")
    assert lines[0].startswith(b'{"QMP": ')
    assert lines[1] == b'{"return": {}}'
    assert lines[2].startswith(b'{"return": {"qemu": ') and lines[2].endswith(b'"id": 2}')
    assert lines[3] == b'{"return": {}}'
    assert proc.returncode == 0


@pytest.mark.qemu
def test_pretty_monitor_matches_qsd(tmp_path: Path, qsd: str) -> None:
    script = (b'{"execute":"qmp_capabilities"}\n'
              b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}\n'
              b'{"execute":"qom-list","arguments":{"path":"/"}}\n'
              b'{"execute":"nope","id":[1,{}]}\n{"execute":"quit"}\n')
    outputs = []
    for argv0 in ([qsd], BLOCKD):
        proc = subprocess.run(
            [*argv0, "--chardev", "stdio,id=m0", "--monitor", "m0,pretty=on"],
            input=script, capture_output=True, timeout=30,
        )
        assert proc.returncode == 0
        # Only the version figures differ between the two daemons.
        text = re.sub(rb'("(micro|minor|major)": )\d+', rb"\1N", proc.stdout)
        outputs.append(re.sub(rb'"package": "[^"]*"', b'"package": "P"', text))
    assert outputs[1] == outputs[0]
    assert outputs[0].count(b"\r\n") > 20


def test_command_line_objects_and_keyval(tmp_path: Path) -> None:
    proc = start_blockd(tmp_path, "--object", "iothread,id=io0,poll-max-ns=7",
                        "--object", '{"qom-type":"iothread","id":"io1"}')
    client = RawClient(proc.socket, negotiate=True)
    reply = client.exchange(
        b'{"execute":"qom-get","arguments":{"path":"/objects/io0","property":"poll-max-ns"}}\n')
    assert reply == [b'{"return": 7}\r\n']
    reply = client.exchange(b'{"execute":"qom-list","arguments":{"path":"/objects"}}\n')
    assert b'"io0"' in reply[0] and b'"io1"' in reply[0]
    client.close()
    assert proc.stop() == 0


@pytest.mark.qemu
def test_stdio_on_regular_files_and_qom_match_qsd(tmp_path: Path, qsd: str) -> None:
    """``--chardev stdio`` with stdin and stdout redirected to files (pipe
    transports refuse those), and the QOM tree listed exactly as QSD lists it."""
    script = tmp_path / "script"
    script.write_bytes(
        b'{"execute":"qmp_capabilities"}\n'
        b'{"execute":"qom-list","arguments":{"path":"/"}}\n'
        b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}\n'
        b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io1"}}\n'
        b'{"execute":"qom-list","arguments":{"path":"/"}}\n'
        b'{"execute":"qom-list","arguments":{"path":"/objects"}}\n'
        b'{"execute":"qom-list","arguments":{"path":"/chardevs"}}\n'
        b'{"execute":"qom-list","arguments":{"path":"/chardevs/m0"}}\n'
        b'{"execute":"qom-list","arguments":{"path":"/chardevs/s1"}}\n'
        b'{"execute":"qom-get","arguments":{"path":"/chardevs/s1","property":"addr"}}\n'
        b'{"execute":"qom-get","arguments":{"path":"s1","property":"connected"}}\n'
        b'{"execute":"qom-get","arguments":{"path":"/chardevs/m0","property":"connected"}}\n'
        b'{"execute":"qom-list","arguments":{"path":"/objects/io1"}}\n'
        b'{"execute":"qom-get","arguments":{"path":"io1","property":"thread-pool-max"}}\n'
        b'{"execute":"qom-list","arguments":{"path":""}}\n'
        b'{"execute":"object-del","arguments":{"id":"io0"}}\n'
        b'{"execute":"qom-list","arguments":{"path":"/objects"}}\n'
        b'{"execute":"quit"}\n'
    )
    outputs = []
    for name, argv0 in (("q", [qsd]), ("b", BLOCKD)):
        out = tmp_path / f"{name}.out"
        sock = tmp_path / f"{name}.sock"
        with open(script, "rb") as stdin, open(out, "wb") as stdout:
            proc = subprocess.run(
                [*argv0, "--chardev", "stdio,id=m0", "--monitor", "m0",
                 "--chardev", f"socket,id=s1,path={sock},server=on,wait=off"],
                stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=30,
            )
        assert proc.returncode == 0, proc.stderr
        text = out.read_bytes().split(b"\r\n", 1)[1]  # past the greeting
        outputs.append(text.replace(str(sock).encode(), b"SOCK"))
    assert outputs[1] == outputs[0]
