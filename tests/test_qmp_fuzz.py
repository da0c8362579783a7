"""Property tests of blockd's QMP server against a real blockd process.

One daemon (two socket monitors) serves the whole module.  Two properties:

* random JSON values -- arbitrary nested values and dicts shaped like QMP
  requests, with real and bogus command names and random arguments -- sent on a
  negotiated connection: every input gets exactly one reply, every reply line is
  valid JSON of QMP's shape, ``id`` is echoed exactly when a request object has
  one, and the daemon stays alive;
* random bytes (0xFF, control characters, unbalanced brackets, quotes, QMP
  fragments) on a fresh connection: the daemon answers with valid JSON lines or
  drops only that connection, and afterwards new clients on both monitors are
  greeted and answered correctly.

``quit`` is never sent (it would end the daemon).  Replies to a random-bytes
connection are collected without sleeping: the client half-closes the socket,
the daemon answers everything it parsed and closes its side on EOF.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from procs import DaemonProcess, RawClient, start_blockd

# Commands blockd implements (minus quit), commands QEMU 7.2 has that a storage
# daemon client might try, and names that exist nowhere.
REAL_COMMANDS = [
    "qmp_capabilities", "query-version", "query-commands", "query-qmp-schema",
    "qom-list", "qom-get", "object-add", "object-del", "human-monitor-command",
]
QEMU_COMMANDS = [
    "query-block", "query-named-block-nodes", "blockdev-add", "blockdev-del",
    "block_resize", "query-jobs", "job-cancel", "query-status", "system_reset",
]
BOGUS_COMMANDS = ["", "Query-Version", "query-version ", "qmp-capabilities", "x" * 300,
                  "\u00e9xecute", "query\u0000version", "quit-not", "\U0001f600"]
ARG_NAMES = ["id", "qom-type", "path", "property", "typename", "command-line", "enable",
             "node-name", "driver", "size", "cpu-index", "filename", "x-bogus"]
# QMP's error classes; a reply outside these is a protocol violation.
ERROR_CLASSES = {"GenericError", "CommandNotFound", "DeviceNotFound", "DeviceNotActive",
                 "KVMMissingCap"}

scalars = (
    st.none()
    | st.booleans()
    # Beyond ~1e308 QEMU parses an integer as an infinite double and prints
    # "inf", which is not JSON (QEMU does the same); stay well inside.
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.sampled_from(ARG_NAMES), inner, max_size=4),
    max_leaves=12,
)


def _not_quit(name: str) -> bool:
    return name.strip() != "quit"


command_names = (
    st.sampled_from(REAL_COMMANDS + QEMU_COMMANDS + BOGUS_COMMANDS)
    | st.text(max_size=24).filter(_not_quit)
)
# An HMP command line whose first word is never quit/q.
hmp_lines = st.sampled_from(["info version", "info", "help", "qemu-io", "info blah", ""]) | (
    st.text(max_size=30).filter(lambda s: (s.split() or [""])[0] not in ("quit", "q"))
)
arguments = st.dictionaries(
    st.sampled_from(ARG_NAMES) | st.text(max_size=10),
    json_values | hmp_lines,
    max_size=4,
)
QOM_PATHS = ["/", "/objects", "/chardevs", "/chardevs/m0", "/objects/o1", "", "bogus",
             "/machine", "//", "/objects/"]
QOM_TYPES = ["iothread", "secret", "throttle-group", "memory-backend-ram", "bogus", ""]
OBJ_IDS = ["o1", "o2", "#bad", ""]
opt_int = st.integers(-(2**64), 2**64) | json_values

# Requests a client could mean: real commands with arguments near the valid ones.
plausible = st.one_of(
    st.fixed_dictionaries({"execute": st.sampled_from(
        ["query-version", "query-commands", "query-qmp-schema", "qmp_capabilities"])}),
    st.fixed_dictionaries({"execute": st.just("qom-list"), "arguments": st.fixed_dictionaries(
        {"path": st.sampled_from(QOM_PATHS) | st.text(max_size=12)})}),
    st.fixed_dictionaries({"execute": st.just("qom-get"), "arguments": st.fixed_dictionaries(
        {"path": st.sampled_from(QOM_PATHS),
         "property": st.sampled_from(["type", "id", "poll-max-ns", "bogus"]) | st.text()})}),
    st.fixed_dictionaries({"execute": st.just("object-add"), "arguments": st.fixed_dictionaries(
        {"qom-type": st.sampled_from(QOM_TYPES), "id": st.sampled_from(OBJ_IDS)},
        optional={"poll-max-ns": opt_int, "poll-grow": opt_int, "aio-max-batch": opt_int,
                  "x-bogus": json_values})}),
    st.fixed_dictionaries({"execute": st.just("object-del"), "arguments": st.fixed_dictionaries(
        {"id": st.sampled_from(OBJ_IDS) | st.text(max_size=8)})}),
    st.fixed_dictionaries({
        "execute": st.just("human-monitor-command"),
        "arguments": st.fixed_dictionaries({"command-line": hmp_lines},
                                           optional={"cpu-index": opt_int})}),
)


def _with_id(request: dict[str, Any], rid: Any) -> dict[str, Any]:
    return {**request, "id": rid}


plausible_requests = plausible | st.builds(_with_id, plausible, json_values)
# Any envelope: random names, arguments of any type, stray members.
random_requests = st.fixed_dictionaries(
    {"execute": command_names},
    optional={"arguments": arguments | json_values, "id": json_values},
) | st.fixed_dictionaries(
    {"execute": command_names | json_values},
    optional={"exec-oob": command_names, "control": json_values, "id": json_values,
              "arguments": arguments},
)
qmp_requests = plausible_requests | random_requests | random_requests

# Anything json.dumps produces is one QEMU JSON value (control characters are
# always escaped); ensure_ascii=False also sends raw UTF-8.
# (value, ensure_ascii, split): split > 0 sends the first ``split`` bytes alone.
inputs = st.tuples(qmp_requests | json_values, st.booleans(), st.integers(0, 40))


def _canon(value: Any) -> Any:
    """``value`` as it comes back after a trip through QEMU's JSON.

    Integers outside int64/uint64 become doubles; everything else is kept.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else float(value)
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return {k: _canon(v) for k, v in value.items()}


def check_reply_shape(line: bytes) -> dict[str, Any]:
    """A reply line is one CRLF-terminated JSON object of QMP's shape."""
    assert line.endswith(b"\r\n"), line
    assert b"\n" not in line[:-2], line
    msg = json.loads(line)
    assert isinstance(msg, dict), line
    if "error" in msg:
        err = msg["error"]
        assert set(err) == {"class", "desc"}, line
        assert err["class"] in ERROR_CLASSES, line
        assert isinstance(err["desc"], str) and err["desc"], line
        # A handler crash is reported as "internal error": a bug, not an answer.
        assert not err["desc"].startswith("internal error"), line
        assert set(msg) <= {"error", "id"}, line
    elif "return" in msg:
        assert set(msg) <= {"return", "id"}, line
    else:
        assert "event" in msg or "QMP" in msg, line
    return msg


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = start_blockd(tmp_path_factory.mktemp("qmp_fuzz"), monitors=2)
    try:
        yield proc
        assert proc.alive(), f"blockd died: {proc.stderr()}"
    finally:
        rc = proc.stop()
    # A clean SIGTERM shutdown and no Python traceback on stderr.
    assert rc == 0, proc.stderr()
    assert "Traceback" not in proc.stderr(), proc.stderr()


@pytest.fixture
def session(daemon: DaemonProcess) -> Iterator[RawClient]:
    """One negotiated connection on monitor 1, shared by one test's examples.

    Function scope: a monitor serves one client at a time, so monitor 1 must be
    free again for the other test's health checks.
    """
    client = RawClient(daemon.sockets[1], negotiate=True)
    yield client
    client.close()


def assert_healthy(daemon: DaemonProcess, path: str) -> None:
    """A new client on ``path`` is greeted, negotiates and gets query-version."""
    client = RawClient(path, negotiate=True)
    try:
        greeting = json.loads(client.greeting)
        assert set(greeting["QMP"]) == {"version", "capabilities"}
        reply = json.loads(client.exchange(b'{"execute":"query-version","id":"hc"}\n')[0])
        assert reply["id"] == "hc"
        assert reply["return"] == greeting["QMP"]["version"]
    finally:
        client.close()
    assert daemon.alive()


@settings(max_examples=100, deadline=5000, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(inputs)
def test_random_json_values_get_one_valid_reply(
    daemon: DaemonProcess, session: RawClient, case: tuple[Any, bool, int]
) -> None:
    value, ensure_ascii, split = case
    data = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    note(repr(data))
    # A bare number needs a delimiter to end its token.  The sync request that
    # follows is answered after the value's reply; its id is one no example makes.
    sync = f"sync-{uuid.uuid4()}"
    if 0 < split < len(data):
        # A value cut in two writes (the daemon usually reads the halves apart).
        session.send(data[:split])
        time.sleep(0.001)
        data = data[split:]
    session.send(data + b'\n{"execute":"query-version","id":"%s"}\n' % sync.encode())
    replies = []
    while True:
        line = session.line()
        msg = check_reply_shape(line)
        if msg.get("id") == sync:
            assert "return" in msg, line
            break
        replies.append((line, msg))
    assert len(replies) == 1, replies
    line, msg = replies[0]
    parse_error = "error" in msg and msg["error"]["desc"].startswith("JSON parse error")
    if isinstance(value, dict) and "id" in value and not parse_error:
        assert "id" in msg, line
        assert msg["id"] == _canon(value["id"]), line
    elif not isinstance(value, dict):
        assert "id" not in msg, line
        assert msg["error"] == {"class": "GenericError",
                                "desc": "QMP input must be a JSON object"}, line
    assert daemon.alive()


# Pieces that steer the lexer/streamer into its odd corners, mixed with noise.
FRAGMENTS = [
    b"{", b"}", b"[", b"]", b'"', b"'", b"\\", b":", b",", b" ", b"\n", b"\r", b"\t",
    b"\x00", b"\x01", b"\x1b", b"\x7f", b"\xfe", b"\xff", b"\xc0\x80", b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\xe2\x82", b"1", b"-", b"1e", b"0x10", b"true", b"nul", b"\\u",
    b'\\u00', b'{"execute":', b'"arguments":', b'"id":', b'"exec-oob":',
    b'{"execute":"qmp_capabilities"}', b'{"execute":"query-version"}',
    b'{"execute":"query-commands"}', b'{"execute":"qom-list","arguments":{"path":"/"}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info version"}}',
    b"'execute'", b"{'execute':'query-version'}", b"[" * 40, b"{" * 40, b"]" * 40,
]
garbage = st.lists(st.sampled_from(FRAGMENTS) | st.binary(min_size=1, max_size=16),
                   max_size=30).map(b"".join)


@settings(max_examples=50, deadline=10000, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(garbage, st.booleans())
def test_random_bytes_never_kill_the_daemon(
    daemon: DaemonProcess, data: bytes, negotiate: bool
) -> None:
    note(repr(data))
    client = RawClient(daemon.socket, negotiate=negotiate)
    try:
        client.send(data)
        # Half-close: the daemon answers what it has parsed, then sees EOF and
        # ends the session, so every reply arrives before our EOF.  A daemon
        # that drops the connection instead is allowed (ECONNRESET / EPIPE).
        try:
            client.sock.shutdown(socket.SHUT_WR)
            tail = client.lines_for(10)
        except (ConnectionResetError, BrokenPipeError):
            tail = []
        for line in tail:
            check_reply_shape(line)
        assert client.buf == b"", client.buf  # nothing but whole CRLF lines
    finally:
        client.close()
    assert daemon.alive()
    # Both monitors still serve new clients.
    assert_healthy(daemon, daemon.sockets[0])
    assert_healthy(daemon, daemon.sockets[1])
