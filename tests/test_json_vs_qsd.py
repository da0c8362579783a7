"""Differential test: our QMP JSON reader/writer against real qemu-storage-daemon 7.2.

The same byte stream goes to QSD and to :class:`JSONStreamParser`.  Each item
our parser yields is turned into the reply QSD must send for it:

* ``JSONParseError``  -> ``{"error": {"class": "GenericError", "desc": DESC}}``
* a non-object value  -> ``... "desc": "QMP input must be a JSON object"}}``
* ``{"execute": "query-version", "id": ID}`` -> ``{"return": VERSION, "id": ID}``
  with ID written by our :func:`encode` -- so ids with odd strings and numbers
  check the encoder byte for byte;
* any other object    -> some reply that is not one of the two above.

Every case is followed by ``\\xff\\n`` (which always resets QEMU's reader) and a
sync command, so one case cannot leak into the next.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockd.qmp.json_encoder import encode
from blockd.qmp.json_parser import MAX_NESTING, JSONParseError, JSONStreamParser

pytestmark = pytest.mark.qemu

NOT_OBJECT = encode({"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}})


class QSDSession:
    """A raw QMP connection to a fresh qemu-storage-daemon, mirrored by our parser."""

    def __init__(self, qsd: str, tmp_path: Path) -> None:
        sock_path = str(tmp_path / "qmp.sock")
        self.proc = subprocess.Popen(
            [
                qsd,
                "--chardev",
                f"socket,path={sock_path},server=on,wait=off,id=m0",
                "--monitor",
                "chardev=m0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:  # the socket file appears before listen(): retry
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(sock_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    self.proc.wait()
                    raise RuntimeError("qemu-storage-daemon did not open its QMP socket") from None
                time.sleep(0.01)
        self.buf = b""
        self.parser = JSONStreamParser()
        self.nsync = 0
        greeting = self.read_line()
        assert greeting.startswith(b'{"QMP": ')
        self.sock.sendall(b'{"execute":"qmp_capabilities"}\n')
        assert self.read_line() == b'{"return": {}}'
        self.sock.sendall(b'{"execute":"query-version"}\n')
        reply = self.read_line()
        assert reply.startswith(b'{"return": {') and reply.endswith(b"}")
        # QSD's own bytes of the version object, to predict replies with
        self.version = reply[len(b'{"return": ') : -1].decode()
        assert encode(json.loads(self.version)) == self.version

    def close(self) -> None:
        self.sock.close()
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def read_line(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from QSD; got {self.buf[:200]!r}")
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise EOFError(f"QSD closed the connection; rc={self.proc.poll()}")
                self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def predict(self, item: Any) -> str | None:
        """The reply line for one parser output, or None for 'some other reply'."""
        if isinstance(item, JSONParseError):
            return encode({"error": {"class": "GenericError", "desc": item.desc}})
        if not isinstance(item, dict):
            return NOT_OBJECT
        if item.get("execute") == "query-version" and set(item) <= {"execute", "id"}:
            if "id" in item:
                return '{"return": ' + self.version + ', "id": ' + encode(item["id"]) + "}"
            return '{"return": ' + self.version + "}"
        return None

    def check(self, data: bytes) -> list[Any]:
        """Send ``data`` (+ reset + sync); assert QSD replied as predicted."""
        self.nsync += 1
        tag = f"sync-{self.nsync}"
        payload = data + b"\xff\n" + b'{"execute":"query-version","id":"' + tag.encode() + b'"}\n'
        items = self.parser.feed(payload)
        assert items and items[-1] == {"execute": "query-version", "id": tag}, items[-3:]
        self.sock.sendall(payload)
        got: list[bytes] = []
        while True:
            line = self.read_line()
            if line.endswith(b'"id": "' + tag.encode() + b'"}'):
                break
            got.append(line)
        items = items[:-1]
        assert len(got) == len(items), (data[:300], got, items)
        for item, line in zip(items, got, strict=True):
            want = self.predict(item)
            text = line.decode("ascii")
            if want is None:
                assert "JSON parse error" not in text and text != NOT_OBJECT, (data, text)
            elif isinstance(item, dict) and has_multikey_dict(item.get("id")):
                # QSD prints QDicts in hash order; compare values then
                assert json.loads(text) == json.loads(want), (data, text, want)
            else:
                assert text == want, (data[:300], text, want)
        return items


def has_multikey_dict(v: Any) -> bool:
    if isinstance(v, dict):
        return len(v) > 1 or any(has_multikey_dict(x) for x in v.values())
    if isinstance(v, list):
        return any(has_multikey_dict(x) for x in v)
    return False


@pytest.fixture
def session(qsd: str, tmp_path: Path) -> Any:
    s = QSDSession(qsd, tmp_path)
    try:
        yield s
    finally:
        s.close()


MALFORMED: list[bytes] = [
    b'{"execute":"query-version",}\n',
    b'{"execute" "query-version"}\n',
    b"{foo}\n",
    b"garbage\n",
    b"}\n",
    b"]\n",
    b'{"a":1}}\n',
    b"\xff\n",
    b'{"execute":"query-version","id":"\x01"}\n',
    b"[1,2,3]\n",
    b'"hello"\n',
    b"42\n",
    b"true false null\n",
    b'{"execute":"query-version","id":1,"id":2}\n',
    b'{"id":"\\uFFFF"}\n',
    b'{"id":"\\uD800"}\n',
    b'{"id":"\\uD83D\\u0041"}\n',
    b'{"id":"\\uDE00"}\n',
    b'{"id":"\\uD83F\\uDFFE"}\n',
    b'{"id":"\\uFDD0"}\n',
    b'{"id":"\\u12"}\n',
    b'{"id":"\\u1"}\n',
    b'{"id":"\\uzzzz"}\n',
    b'{"id":"\\u12\xc3\xa9"}\n',
    b'{"id":"\\u123\xc3\xa9"}\n',
    b'{"id":"\\x"}\n',
    b'{"id":"\\\xc3\xa9"}\n',
    b'{"id":"\\x\xc3("}\n',
    b'{"id":"\xc3(\\x"}\n',
    b'{"id":01}\n',
    b'{"id":"\xef\xbf\xbe"}\n',
    b'{"id":"\xc3"}\n',
    b'{"id":"\xed\xa0\x80"}\n',
    b'{"id":"\xe0\x80\x80"}\n',
    b'{"id":"\xf4\x90\x80\x80"}\n',
    b'{"id":"\xf8\x88\x80\x80\x80"}\n',
    b'{"id":"a\x00b"}\n',
    b"\xc3\x28\n",
    b'{"id":"\xff"}\n',
    b'{"id":"abc\xfe',
    b'{"id":"abc\n',
    b"[1.]",
    b"[-]",
    b"[1e]",
    b"[1e+]",
    b"[.5]",
    b"[+1]",
    b"[1x]",
    b"[x1]",
    b"[0x10]",
    b"[1 2]",
    b"[0e5]",
    b"[-0E5, 0.5e5, 5e05, 5e+0]",
    b"[1,]",
    b"[,1]",
    b"[}",
    b"[{]}",
    b'{"a" 1}',
    b'{"a":1 "b":2}',
    b'{"a":}',
    b"{1:2}",
    b"{[1,x]:2}",
    b"{[1,2]:2}",
    b"{null:2}",
    b'{"a":1,"a":x}',
    b'{"a":[1,2}]',
    b"tru\n",
    b"nulls\n",
    b"True\n",
    b"%d %s\n",
    b'{"a":@@ "x" 1 2 3}{"b":1}',
    b'{"a":\x01}',
    b"\x01\x02\n",
    b"\xff\xff\n",
    b"\xfe\n",
    b"\x00\n",
    b"\x7f\n",
    b"@\tx\ny\n",
    b'[1,\xff"a"]',
    b"[1\xff]",
    b'{"a":1}\xffxyz"q"{"b":2}',
    b"x" * 3000 + b"\n",
    b'"' + b"a" * 20000 + b"\x01",
    b"{'a':'it\\'s \"q\"'}",
    b'{"a":"\\/\\b\\f\\n\\r\\t\\\'"}',
    b"[9223372036854775807,9223372036854775808,18446744073709551616]",
    b"[-9223372036854775808,-9223372036854775809]",
]

IDS: list[bytes] = [
    b'"\\u0001\\u001f\\n\\t\\"\\\\/\\b\\f\\r"',
    b'"\xc3\xa9"',
    b'"\\u00e9\\u00E9"',
    b'"\xf0\x9f\x98\x80"',
    b'"\\ud83d\\ude00"',
    b'"\\u007f"',
    b'"\x7f"',
    b'"\\u0000"',
    b'"\xc0\x80"',
    b'"\\u20ac\xe2\x82\xac\xf4\x8f\xbf\xbd"',
    b"'it\\'s'",
    b'""',
    b"18446744073709551615",
    b"-9223372036854775808",
    b"9223372036854775808",
    b"18446744073709551616",
    b"123456789012345678901234567890",
    b"-123456789012345678901234567890",
    b"1.5",
    b"1e300",
    b"-0.0",
    b"0.1",
    b"5e-324",
    b"1e-400",
    b"1.7976931348623157e308",
    b"1e400",
    b"-1e400",
    b"0",
    b"-0",
    b"1E2",
    b"2.5e-3",
    b"100.0",
    b"123456.789",
    b'[1.5, "x", null, true, false, {}, []]',
    b'{"k": 0.1}',
    b'{"b":1,"a":2,"c":3,"zz":4,"id":5}',
    b"[[[[0.3]]]]",
]


def test_malformed_inputs_match_qsd(session: QSDSession) -> None:
    for data in MALFORMED:
        session.check(data)


def test_echoed_ids_match_qsd_bytes(session: QSDSession) -> None:
    for ident in IDS:
        items = session.check(b'{"execute":"query-version","id":' + ident + b"}\n")
        # the command, then the stray 0xFF of the reset
        assert len(items) == 2 and isinstance(items[0], dict), (ident, items)


def test_split_and_odd_framing_match_qsd(session: QSDSession) -> None:
    cmd = b'{"execute":"query-version","id":"split"}'
    for i in range(1, len(cmd)):
        session.sock.sendall(cmd[:i])
        assert session.parser.feed(cmd[:i]) == []
        session.check(cmd[i:] + b"\r\n")
    session.check(b'{"execute":"query-version","id":1}{"execute":"query-version","id":2}')
    session.check(b'\r\n\t {"execute":\r\n"query-version",\t"id":\n3}\r\n')


def test_nesting_limit_matches_qsd(session: QSDSession) -> None:
    # QSD's monitor reads its socket one byte per read(), about 8 s per MiB, so
    # the 64 MiB token-size and 2 Mi token-count limits are left to the unit
    # tests; the nesting limit is cheap to reach.
    session.check(b"[" * (MAX_NESTING + 1) + b"1]]")
    session.check(b'{"a":[' * (MAX_NESTING // 2) + b'{"b":1}')
    session.check(b"[" * MAX_NESTING + b"]" * MAX_NESTING)


FRAGMENTS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b" ",
    b"\n",
    b'"a"',
    b"'b'",
    b'"\\u00e9"',
    b'"\\ud800"',
    b'"\\q"',
    b'"x',
    b"'",
    b'"',
    b"\\",
    b"1",
    b"0",
    b"-",
    b"01",
    b"1.5",
    b"1e5",
    b"1.",
    b"e",
    b"true",
    b"null",
    b"nul",
    b"foo",
    b"\x01",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\xc3\xa9",
    b"\xc3",
    b"\xc0\x80",
    b"\xef\xbf\xbf",
    b'{"a":1,"a":2}',
    b'{"execute":"query-version","id":',
]

_NONCHARS = (
    [chr(c) for c in range(0xFDD0, 0xFDF0)]
    + [chr(p * 0x10000 + 0xFFFE) for p in range(17)]
    + [chr(p * 0x10000 + 0xFFFF) for p in range(17)]
)
_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=_NONCHARS),
    max_size=8,
)
_ids = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 66), max_value=1 << 66)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, min_size=1, max_size=1),
    max_leaves=6,
)


def test_generated_inputs_match_qsd(session: QSDSession) -> None:
    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=16))
    def malformed(frags: list[bytes]) -> None:
        session.check(b"".join(frags))

    @settings(max_examples=40, deadline=None, database=None)
    @given(_ids, st.booleans())
    def ids(ident: Any, ascii_only: bool) -> None:
        text = json.dumps(ident, ensure_ascii=ascii_only).encode()
        session.check(b'{"execute":"query-version","id":' + text + b"}")

    malformed()
    ids()


JSON_TEXTS = [
    '{"a":1',
    "[1,",
    '{"a":1}{"b":2}',
    '{"a":1}}',
    "{'a':1}x",
    "",
    " ",
    '"abc',
    '{"a":-',
    '{"a":1e',
    '{"a":1.',
    '{"a":tru',
    '{"a":"\\u12"}',
    '{"a":"\\q"}',
    '{"a":1,"a":2}',
    "]",
    "{foo}",
    '{"a" 1}',
    '{"driver":"null-co","size":01}',
    '{"a":"\x01"}',
    "{'a':'b",
]


def test_qobject_from_json_matches_qemu_img(qemu_img: str) -> None:
    """Whole-text parsing (flush at the end) against qemu-img's json: filenames."""
    from blockd.qmp.errors import GenericError
    from blockd.qmp.json_parser import qobject_from_json

    prefix = "Could not parse the JSON options: "
    for text in JSON_TEXTS:
        res = subprocess.run(
            [qemu_img, "info", "json:" + text], capture_output=True, text=True, check=False
        )
        assert res.returncode != 0
        line = res.stderr.splitlines()[0]
        assert prefix in line, (text, line)
        want = line.split(prefix, 1)[1]
        with pytest.raises(GenericError) as info:
            qobject_from_json(text)
        assert info.value.desc == want, text
