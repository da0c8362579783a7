"""Differential wire test: the same byte script to blockd and to qemu-storage-daemon.

Every input is followed by a sync request; everything each daemon writes up to
the sync reply is compared byte for byte, with only the version object and
timestamps masked.  Covers negotiation, envelope errors, JSON syntax errors and
parser recovery, id echoing, OOB, and the QOM commands both daemons have.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import DaemonProcess, RawClient, neutral, start_blockd, start_qsd

SYNC = b'{"execute":"query-version","id":"sync"}\n'

# (label, bytes) sent before qmp_capabilities.
PRE_NEGOTIATION: list[bytes] = [
    b'{"execute":"query-version"}\n',
    b'{"execute":"query-version","id":1}\n',
    b'{"execute":"nonexistent-cmd","id":2}\n',
    b'{"id":3}\n',
    b'{"exec-oob":"query-version","id":4}\n',
    b"garbage\n",
    b"[1,2]\n",
    b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}\n',
    b'{"execute":"qmp_capabilities","arguments":{"x":1},"id":5}\n',
    b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"},"id":6}\n',
]

NEGOTIATE = b'{"execute":"qmp_capabilities","id":"neg"}\n'

COMMAND_MODE: list[bytes] = [
    # ids of every JSON type, echoed verbatim
    b'{"execute":"query-version","id":"abc"}\n',
    b'{"execute":"query-version","id":{"a":[1,2]}}\n',
    b'{"execute":"query-version","id":null}\n',
    b'{"execute":"query-version","id":-7}\n',
    b'{"execute":"query-version","id":1.5}\n',
    b'{"execute":"query-version","id":18446744073709551615}\n',
    b'{"execute":"query-version","id":"\\u00e9\\ud83d\\ude00 \\t\\n\\u0001"}\n',
    b'{"execute":"query-version","id":[true,false,null,"x",0.1]}\n',
    b'{"execute":"query-version","id":-0.0}\n',
    b'{"execute":"query-version","id":1e300}\n',
    # envelope
    b"[1,2,3]\n",
    b'"hello"\n',
    b"42\n",
    b"null\n",
    b'{"id":14}\n',
    b'{"execute":5,"id":13}\n',
    b'{"execute":"query-version","extra":1,"id":15}\n',
    b'{"execute":"query-version","arguments":"str","id":12}\n',
    b'{"execute":"query-version","arguments":null,"id":4}\n',
    b'{"execute":"query-version","arguments":[],"id":4}\n',
    b'{"execute":"query-version","arguments":{},"id":5}\n',
    b'{"execute":"query-version","arguments":{"x":1},"id":8}\n',
    b'{"execute":"query-version","control":{"run-oob":true},"id":24}\n',
    b'{"execute":"query-version","zzz":1,"aaa":2,"arguments":5,"id":9}\n',
    b'{"arguments":{},"bogus":1}\n',
    b'{"execute":"nonexistent-cmd","id":7}\n',
    b'{"execute":"nonexistent-cmd"}\n',
    b'{"execute":""}\n',
    b'{"exec-oob":"query-version","id":21}\n',
    b'{"execute":"query-version","exec-oob":"query-version","id":23}\n',
    b'{"execute":"qmp_capabilities"}\n',
    b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}\n',
    b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":"again"}\n',
    # JSON syntax and recovery
    b'{"execute":"query-version",}\n',
    b'{"execute" "query-version"}\n',
    b"{foo}\n",
    b"garbage\n",
    b"}\n",
    b"]\n",
    b'{"a":1}}\n',
    b"\xff\n",
    b'{"execute":"query-version","id":"\x01"}\n',
    b"{'execute':'query-version','id':25}\n",
    b"{'execute':'query-version','id':'it\\'s'}\n",
    b'{"execute":"query-version", "id":17}{"execute":"query-version", "id":18}\n',
    b'{"execute":"query-version", \n "id":20}\n',
    b'\r\n{"execute":"query-version","id":"crlf"}\r\n',
    b'{"execute":"query-version","id":"\\x"}\n',
    b'{"execute":"query-version","id":"\\ud800"}\n',
    b'{"execute":"query-version","id":"\xc3\x28"}\n',
    b'{"execute":"query-version","id":01}\n',
    b'{"execute":"query-version","id":1.}\n',
    b'{"execute":"query-version","id":truex}\n',
    b"[" * 1025 + b"]" * 1025 + b"\n",
    b'{"execute":"query-version","id":"' + b"x" * 5000 + b'"}\n',
    # QOM: both daemons implement these
    b'{"execute":"qom-list","arguments":{"path":"/objects"},"id":30}\n',
    b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"},"id":31}\n',
    b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"},"id":32}\n',
    b'{"execute":"qom-list","arguments":{"path":"/objects"},"id":33}\n',
    b'{"execute":"qom-list","arguments":{"path":"/objects/io0"},"id":34}\n',
    b'{"execute":"qom-list","arguments":{"path":"io0"},"id":35}\n',
    b'{"execute":"qom-list","arguments":{"path":"/nope"},"id":36}\n',
    b'{"execute":"qom-get","arguments":{"path":"/objects/io0","property":"poll-max-ns"}}\n',
    b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"1x"},"id":37}\n',
    b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io1",'
    b'"poll-max-ns":-1},"id":38}\n',
    b'{"execute":"object-add","arguments":{"qom-type":"bogus","id":"x"},"id":39}\n',
    b'{"execute":"object-add","arguments":{"qom-type":"iothread"},"id":40}\n',
    b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io2",'
    b'"poll-grow":"x"},"id":41}\n',
    b'{"execute":"object-del","arguments":{"id":"io0"},"id":42}\n',
    b'{"execute":"object-del","arguments":{"id":"io0"},"id":43}\n',
    b'{"execute":"object-del","arguments":{},"id":44}\n',
]

OOB_MODE: list[bytes] = [
    b'{"exec-oob":"query-version","id":1}\n',
    b'{"exec-oob":"query-version"}\n',
    b'{"exec-oob":"migrate-recover","arguments":{"uri":"x"},"id":2}\n',
    b'{"execute":"query-version","exec-oob":"query-version","id":3}\n',
    b'{"exec-oob":5,"id":4}\n',
    b'{"execute":"query-version","id":5}\n',
]


def transcript(proc: DaemonProcess) -> list[list[bytes]]:
    """Per input, the masked lines the daemon wrote before the sync reply."""
    out: list[list[bytes]] = []

    def run(client: RawClient, data: bytes) -> None:
        client.send(data + SYNC)
        lines = []
        while True:
            line = client.line()
            if b'"id": "sync"' in line:
                break
            lines.append(neutral(line))
        out.append(lines)

    client = RawClient(proc.socket)
    out.append([neutral(client.greeting)])
    for data in PRE_NEGOTIATION:
        run(client, data)
    run(client, NEGOTIATE)
    for data in COMMAND_MODE:
        run(client, data)
    client.close()

    client = RawClient(proc.socket)
    client.send(b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}\n')
    out.append([client.line()])
    for data in OOB_MODE:
        run(client, data)
    client.close()
    return out


@pytest.mark.qemu
def test_wire_replies_match_qsd(tmp_path: Path, qsd: str) -> None:
    assert len(PRE_NEGOTIATION) + len(COMMAND_MODE) + len(OOB_MODE) >= 40
    (tmp_path / "b").mkdir()
    (tmp_path / "q").mkdir()
    blockd = start_blockd(tmp_path / "b")
    qemu = start_qsd(tmp_path / "q")
    try:
        mine = transcript(blockd)
        theirs = transcript(qemu)
    finally:
        blockd.stop()
        qemu.stop()
    inputs = [b"<greeting>", *PRE_NEGOTIATION, NEGOTIATE, *COMMAND_MODE, b"<oob>", *OOB_MODE]
    for data, a, b in zip(inputs, mine, theirs, strict=True):
        assert a == b, f"input {data[:80]!r}: blockd {a} != qsd {b}"
