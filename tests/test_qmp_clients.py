"""The real ``qemu.qmp`` clients (async QMPClient, legacy QEMUMonitorProtocol)
against a real blockd process, plus monitor semantics: several monitors, one
client per monitor at a time, events to every negotiated session."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

from blockd.chardev import parse_chardev
from blockd.daemon import Daemon
from tests.procs import DaemonProcess, RawClient, start_blockd


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = start_blockd(tmp_path_factory.mktemp("blockd"), monitors=2)
    yield proc
    assert proc.stop() == 0


async def test_async_client(daemon: DaemonProcess) -> None:
    qmp = QMPClient("t")
    await qmp.connect(daemon.socket)
    assert qmp.greeting is not None
    assert qmp.greeting.QMP.capabilities == ["oob"]
    version = await qmp.execute("query-version")
    assert version["qemu"] == {"major": 7, "minor": 2, "micro": 0}
    assert version["package"].startswith("blockd ")
    names = {c["name"] for c in await qmp.execute("query-commands")}
    assert {"qmp_capabilities", "query-version", "query-commands", "query-qmp-schema",
            "quit", "object-add", "object-del", "qom-list"} <= names
    schema = await qmp.execute("query-qmp-schema")
    commands = {e["name"] for e in schema if e["meta-type"] == "command"}
    assert commands == names
    with pytest.raises(ExecuteError) as info:
        await qmp.execute("nonexistent-cmd")
    assert info.value.error_class == "CommandNotFound"
    assert str(info.value) == "The command nonexistent-cmd has not been found"
    with pytest.raises(ExecuteError) as info:
        await qmp.execute("qom-list", {"path": 5})
    assert str(info.value) == "Invalid parameter type for 'path', expected: string"
    with pytest.raises(ExecuteError) as info:
        await qmp.execute("qmp_capabilities")
    assert info.value.error_class == "CommandNotFound"
    await qmp.disconnect()


def test_legacy_client(daemon: DaemonProcess) -> None:
    qmp = QEMUMonitorProtocol(daemon.socket)
    greeting = qmp.connect()
    assert greeting["QMP"]["version"]["qemu"]["major"] == 7
    # cmd_obj sends no id: the reply must not invent one.
    reply = qmp.cmd_obj({"execute": "query-version"})
    assert set(reply) == {"return"}
    reply = qmp.cmd_obj({"execute": "query-version", "id": "x"})
    assert reply["id"] == "x"
    reply = qmp.cmd_obj({"execute": "blockdev-nope"})
    assert reply == {"error": {"class": "CommandNotFound",
                               "desc": "The command blockdev-nope has not been found"}}
    assert qmp.cmd_raw("object-add", {"qom-type": "iothread", "id": "legacy0"}) == {"return": {}}
    # cmd() goes through execute(), which tags the request with an id.
    assert qmp.cmd("object-del", id="legacy0") == {}
    qmp.close()


def test_one_client_per_monitor(daemon: DaemonProcess) -> None:
    first = RawClient(daemon.socket, negotiate=True)
    # A second client on the same monitor is connected by the kernel but not greeted.
    second = socket.socket(socket.AF_UNIX)
    second.connect(daemon.socket)
    second.settimeout(0.5)
    with pytest.raises(TimeoutError):
        second.recv(100)
    # The other monitor serves a client meanwhile.
    other = RawClient(daemon.sockets[1], negotiate=True)
    assert b'"return"' in other.exchange(b'{"execute":"query-version"}\n')[0]
    other.close()
    assert b'"return"' in first.exchange(b'{"execute":"query-version"}\n')[0]
    first.close()
    # Once the first leaves, the waiting client gets a fresh greeting.
    second.settimeout(10)
    assert second.recv(4096).startswith(b'{"QMP": ')
    second.close()
    # Negotiation state is per connection.
    again = RawClient(daemon.socket)
    reply = again.exchange(b'{"execute":"query-version"}\n')[0]
    assert b"Expecting capabilities negotiation" in reply
    again.close()


def test_output_framing(daemon: DaemonProcess) -> None:
    client = RawClient(daemon.socket, negotiate=True)
    assert client.greeting.endswith(b"}\r\n") and client.greeting.count(b"\n") == 1
    client.send(b'{"execute":"query-qmp-schema","id":1}\n')
    line = client.line()
    assert line.endswith(b"\r\n") and b"\n" not in line[:-1]
    assert len(json.loads(line)["return"]) > 100
    client.close()


def test_quit(tmp_path: Path) -> None:
    proc = start_blockd(tmp_path)
    client = RawClient(proc.socket, negotiate=True)
    assert client.exchange(b'{"execute":"quit","id":99}\n') == [b'{"return": {}, "id": 99}\r\n']
    with pytest.raises(EOFError):
        client.line()
    assert proc.proc.wait(10) == 0
    assert not Path(proc.socket).exists()


async def test_events_reach_every_negotiated_monitor(tmp_path: Path) -> None:
    """In-process daemon on real sockets: the test process raises the event."""
    daemon = Daemon()
    paths = [str(tmp_path / f"e{i}.sock") for i in range(3)]
    for i, path in enumerate(paths):
        await daemon.add_chardev(parse_chardev(f"socket,path={path},server=on,wait=off,id=e{i}"))
        daemon.add_monitor(f"e{i}", pretty=False)
    serving = asyncio.create_task(daemon.serve())
    clients = [QMPClient(f"c{i}") for i in range(2)]
    for client, path in zip(clients, paths, strict=False):
        await client.connect(path)
    # The third connection does not negotiate: it must get no event.
    reader, writer = await asyncio.open_unix_connection(paths[2])
    greeting = await reader.readline()
    assert greeting.startswith(b'{"QMP"')
    daemon.events.emit("JOB_STATUS_CHANGE", {"status": "created", "id": "j0"})
    for client in clients:
        event = await asyncio.wait_for(client.events.get(), 5)
        assert event["event"] == "JOB_STATUS_CHANGE"
        assert event["data"] == {"status": "created", "id": "j0"}
        assert set(event["timestamp"]) == {"seconds", "microseconds"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readline(), 0.3)
    writer.close()
    for client in clients:
        await client.disconnect()
    daemon.request_shutdown()
    await asyncio.wait_for(serving, 10)
    assert not any(Path(p).exists() for p in paths)


def test_oversized_input_is_bounded(daemon: DaemonProcess) -> None:
    """A 65 MiB token gets QEMU's limit error; memory stays bounded and the
    connection keeps working."""
    client = RawClient(daemon.socket, negotiate=True, timeout=120)
    client.send(b'{"execute":"query-version","id":"' + b"x" * (65 * 2**20))
    client.send(b'"}\n{"execute":"query-version","id":2}\n')
    assert client.line() == (
        b'{"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}\r\n'
    )
    while True:
        line = client.line()
        if b'"id": 2' in line:
            assert line.startswith(b'{"return": {"qemu": ')
            break
        assert line.startswith(b'{"error": {"class": "GenericError", "desc": "JSON parse error')
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    assert peak_kib < 512 * 1024, f"peak RSS {peak_kib} KiB"
    client.close()


def test_qmp_shell(tmp_path: Path) -> None:
    """README's quickstart: qmp-shell (QMP and HMP modes) against blockd."""
    import subprocess
    import sys

    shell = str(Path(sys.executable).with_name("qmp-shell"))
    proc = start_blockd(tmp_path)
    try:
        out = subprocess.run(
            [shell, proc.socket], input="query-version\nobject-add qom-type=iothread id=io0\n"
            "qom-list path=/objects\n", capture_output=True, text=True, timeout=30,
        ).stdout
        assert "Connected to QEMU 7.2.0" in out
        assert '"package": "blockd 0.1.0"' in out
        assert '{"name": "io0", "type": "child<iothread>"}' in out
        out = subprocess.run(
            [shell, "-H", proc.socket], input="info version\nhelp\n",
            capture_output=True, text=True, timeout=30,
        ).stdout
        assert "7.2.0blockd 0.1.0" in out
        assert 'qemu-io [-d] [device] "[command]" -- run a qemu-io command' in out
    finally:
        assert proc.stop() == 0
