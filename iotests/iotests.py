"""QEMU's iotests API (the part block tests use), driving blockd instead of QEMU.

A ported iotest does ``import iotests`` and runs unchanged: images are made with
``qemu_img()``/``qemu_io()`` (blockd's ``blockd-img``/``blockd-io`` unless the
environment selects real QEMU tools), ``VM`` starts a daemon whose QMP monitor
connects out to a socket this module listens on (as QEMU 7.2's ``machine.py``
does), and ``main()`` runs the unittest cases with the output format that
``check`` compares against the ``.out`` file.

Environment (``check`` sets all of them; defaults make ``python3 iotests/245``
work on its own):

* ``TEST_DIR``, ``SOCK_DIR``, ``OUTPUT_DIR`` -- scratch, socket and notrun dirs
* ``IMGFMT`` (default raw), ``IMGPROTO`` (file), ``CACHEMODE`` (writeback),
  ``AIOMODE`` (threads), ``IMGOPTS``
* ``IOTESTS_QEMU_IMG`` / ``IOTESTS_QEMU_IO``: image tools (default
  ``blockd-img`` / ``blockd-io``); QEMU's ``QEMU_IMG_PROG``/``QEMU_IO_PROG``
  are honoured too
* ``IOTESTS_VM``: ``blockd`` (default) or ``qemu`` (``qemu-system-x86_64``,
  binary from ``QEMU_PROG``); ``BLOCKD_PROG`` overrides how blockd is started
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from qemu.qmp.legacy import QEMUMonitorProtocol

QMPMessage = dict[str, Any]
Filter = Callable[[Any], Any]
_F = TypeVar("_F", bound=Callable[..., Any])

logger = logging.getLogger("qemu.iotests")
test_logger = logging.getLogger("qemu.iotests.log")


# --- environment ---------------------------------------------------------------

def _default_dir(var: str, prefix: str) -> str:
    path = os.environ.get(var)
    if not path:
        path = tempfile.mkdtemp(prefix=prefix)
        atexit.register(shutil.rmtree, path, True)
    os.makedirs(path, exist_ok=True)
    return path


def _tool(env_names: Sequence[str], default: str) -> str:
    for name in env_names:
        value = os.environ.get(name)
        if value:
            return value
    found = shutil.which(default)
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), default)
    return beside if os.path.exists(beside) else default


test_dir = _default_dir("TEST_DIR", "blockd-iotests-")
# Unix socket paths are limited to 108 bytes: keep the default short.
sock_dir = _default_dir("SOCK_DIR", "bdsock-")
# Where notrun/casenotrun records go: check sets OUTPUT_DIR; otherwise (pytest)
# the git-ignored iotests/results, never the caller's working directory.
output_dir = os.environ.get(
    "OUTPUT_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
imgfmt = os.environ.get("IMGFMT", "raw")
imgproto = os.environ.get("IMGPROTO", "file")
imgopts = os.environ.get("IMGOPTS", "")
cachemode = os.environ.get("CACHEMODE", "writeback")
aiomode = os.environ.get("AIOMODE", "threads")
qemu_default_machine = os.environ.get("QEMU_DEFAULT_MACHINE", "pc")

qemu_img_prog = _tool(("IOTESTS_QEMU_IMG", "QEMU_IMG_PROG"), "blockd-img")
qemu_io_prog = _tool(("IOTESTS_QEMU_IO", "QEMU_IO_PROG"), "blockd-io")
vm_kind = os.environ.get("IOTESTS_VM", "blockd")
if vm_kind not in ("blockd", "qemu"):
    sys.exit(f"IOTESTS_VM must be 'blockd' or 'qemu', not {vm_kind!r}")
qemu_prog = _tool(("QEMU_PROG",), "qemu-system-x86_64")
blockd_argv = (shlex.split(os.environ["BLOCKD_PROG"]) if os.environ.get("BLOCKD_PROG")
               else [sys.executable, "-m", "blockd"])

qemu_img_args = [qemu_img_prog, *shlex.split(os.environ.get("QEMU_IMG_OPTIONS", ""))]
qemu_io_args_no_fmt = [qemu_io_prog, *shlex.split(
    os.environ.get("QEMU_IO_OPTIONS", f"--cache {cachemode} --aio {aiomode}"))]

# The name check uses for the test (``245``); notrun files are named after it.
seq = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "iotest"


# --- running the image tools ---------------------------------------------------

class ProcessResult(str):
    """A tool's output that is also a ``subprocess.CompletedProcess`` look-alike.

    QEMU 6.0's ``qemu_io()`` returned the output text (245 does ``'O_DIRECT' in
    qemu_io(...)``) while 7.2's returns a ``CompletedProcess``; a ``str`` with
    ``stdout``/``returncode``/``args`` serves test bodies of both eras.
    """

    stdout: str
    stderr: str | None
    returncode: int
    args: list[str]

    def __new__(cls, args: list[str], returncode: int, stdout: str) -> ProcessResult:
        obj = super().__new__(cls, stdout)
        obj.args, obj.returncode, obj.stdout, obj.stderr = args, returncode, stdout, None
        return obj

    def check_returncode(self) -> None:
        if self.returncode:
            raise VerboseProcessError(self.returncode, self.args, output=self.stdout)


class VerboseProcessError(subprocess.CalledProcessError):
    """A failed tool run whose message includes the tool's output (as 7.2's)."""

    def __str__(self) -> str:
        out = self.output if isinstance(self.output, str) else ""
        return f"{super().__str__()}\n  output:\n" + "\n".join(
            "    " + line for line in out.splitlines())


# --- blockd's tools through a fork server ---------------------------------------
#
# A blockd-img/blockd-io run spends most of its ~0.3 s starting Python and
# importing blockd.  The fork server is a Python process that has imported both
# tools once; for every run it forks a child that becomes the tool process:
# stdin/stdout/stderr, working directory, environment and argv are the
# caller's, the tool's console-script ``main()`` runs, and its exit status is
# the child's.  Only what happens before ``main()`` (interpreter start-up and
# the imports) is shared, which is why the server refuses to fork if importing
# left any thread behind.  ``IOTESTS_TOOL_FORKSERVER=0`` runs the executables.

_FORKSERVER_CODE = r"""
import json, os, socket, struct, sys, threading, traceback
import blockd.tools.img, blockd.tools.io
import blockd.drivers.base
blockd.drivers.base.registered_drivers()  # imports every driver module
tools = {"img": blockd.tools.img, "io": blockd.tools.io}
sock = socket.socket(fileno=int(sys.argv[1]))
if threading.active_count() != 1:
    sys.exit(3)
sock.send(b"ready")
while True:
    msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 3)
    if not msg:
        break
    req = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            sock.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in set(fds):
                os.close(fd)
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            sys.argv = req["argv"]
            rc = tools[req["tool"]].main()
        except SystemExit as e:
            if isinstance(e.code, str):
                sys.stderr.write(e.code + "\n")
                rc = 1
            else:
                rc = e.code or 0
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(rc or 0)
    for fd in fds:
        os.close(fd)
    _pid, status = os.waitpid(pid, 0)
    sock.send(struct.pack("i", os.waitstatus_to_exitcode(status)))
"""


class _ToolForkServer:
    """The fork server process and its request socket (started on first use)."""

    def __init__(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORKSERVER_CODE, str(child.fileno())],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL)
        child.close()
        self.sock = parent
        if self.sock.recv(16) != b"ready":
            raise RuntimeError("tool fork server did not start")

    def run(self, tool: str, args: list[str], combine_stdio: bool) -> tuple[int, str]:
        out_r, out_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            err = out_w if combine_stdio else 2
            req = {"tool": tool, "argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}
            socket.send_fds(self.sock, [json.dumps(req).encode()], [null, out_w, err])
        finally:
            os.close(out_w)
            os.close(null)
        with os.fdopen(out_r, encoding="utf-8", errors="replace") as f:
            output = f.read()
        reply = self.sock.recv(4)
        if len(reply) != 4:
            raise RuntimeError("tool fork server died")
        return struct.unpack("i", reply)[0], output

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_forkserver: _ToolForkServer | None = None


def _forkserver_tool(prog: str) -> str | None:
    """``img``/``io`` when ``prog`` is this environment's own blockd tool."""
    if os.environ.get("IOTESTS_TOOL_FORKSERVER", "1") == "0":
        return None
    own = os.path.dirname(os.path.abspath(sys.executable))
    for tool in ("img", "io"):
        if os.path.abspath(prog) == os.path.join(own, f"blockd-{tool}"):
            return tool
    return None


def _run_tool(args: list[str], combine_stdio: bool) -> tuple[int, str] | None:
    global _forkserver
    tool = _forkserver_tool(args[0])
    if tool is None:
        return None
    if _forkserver is None or _forkserver.proc.poll() is not None:
        _forkserver = _ToolForkServer()
        atexit.register(_forkserver.close)
    return _forkserver.run(tool, args, combine_stdio)


def _run(args: list[str], check: bool, combine_stdio: bool = True,
         input: str | None = None) -> ProcessResult:
    done = _run_tool(args, combine_stdio) if input is None else None
    if done is None:
        proc = subprocess.run(args, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if combine_stdio else None,
                              text=True, input=input, check=False)
        done = (proc.returncode, proc.stdout)
    returncode, stdout = done
    if returncode < 0:
        sys.stderr.write(f"{args[0]} received signal {-returncode}: {' '.join(args)}\n")
    result = ProcessResult(args, returncode, stdout)
    if check:
        result.check_returncode()
    return result


def qemu_img_create_prepare_args(args: list[str]) -> list[str]:
    """Add ``IMGOPTS`` to a ``create`` of an ``IMGFMT`` image, as QEMU 7.2's helper.

    Like QEMU's, it adds no ``-f``: ``qemu_img('create', path, size)`` makes a
    raw image (030's and 040's backing files rely on that).
    """
    if not args or args[0] != "create":
        return list(args)
    rest = list(args[1:])
    fmt = rest[rest.index("-f") + 1] if "-f" in rest else None
    if imgopts and fmt == imgfmt and "-o" not in rest:
        rest = ["-o", imgopts, *rest]
    return ["create", *rest]


def qemu_img(*args: str, check: bool = True, combine_stdio: bool = True) -> ProcessResult:
    """Run qemu-img (blockd-img by default); raise on failure when ``check``."""
    full = [*qemu_img_args, *qemu_img_create_prepare_args(list(args))]
    return _run(full, check, combine_stdio)


def qemu_img_log(*args: str, check: bool = True) -> ProcessResult:
    result = qemu_img(*args, check=check)
    log(result.stdout, filters=[filter_testfiles])
    return result


def qemu_img_pipe(*args: str) -> str:
    """The output of a qemu-img run (QEMU 6.0 name)."""
    return qemu_img(*args, check=False).stdout


def qemu_img_info(*args: str) -> Any:
    return json.loads(qemu_img("info", "--output=json", *args).stdout)


def qemu_img_map(*args: str) -> Any:
    return json.loads(qemu_img("map", "--output=json", *args).stdout)


def qemu_io_wrap_args(args: Sequence[str]) -> list[str]:
    """qemu-io's command line: cache/aio options, and ``-f IMGFMT`` unless given."""
    if "-f" in args or "--image-opts" in args:
        return [*qemu_io_args_no_fmt, *args]
    return [*qemu_io_args_no_fmt, "-f", imgfmt, *args]


def qemu_io(*args: str, check: bool = True, combine_stdio: bool = True) -> ProcessResult:
    """Run qemu-io (blockd-io by default) with the format and cache options of the run."""
    return _run(qemu_io_wrap_args(args), check, combine_stdio)


def qemu_io_log(*args: str, check: bool = True) -> ProcessResult:
    result = qemu_io(*args, check=check)
    log(result.stdout, filters=[filter_testfiles, filter_qemu_io])
    return result


def qemu_io_silent(*args: str) -> int:
    """qemu-io's exit code, output discarded (QEMU 6.0 helper)."""
    return qemu_io(*args, check=False).returncode


def compare_images(img1: str, img2: str, fmt1: str | None = None,
                   fmt2: str | None = None) -> bool:
    """True when ``qemu-img compare`` finds the guest-visible contents identical."""
    res = qemu_img("compare", "-f", fmt1 or imgfmt, "-F", fmt2 or imgfmt, img1, img2,
                   check=False)
    if res.returncode not in (0, 1):
        raise VerboseProcessError(res.returncode, res.args, output=res.stdout)
    return res.returncode == 0


def create_image(name: str, size: int = 1024 * 1024) -> None:
    """A raw file whose every 512-byte sector starts with its own sector number."""
    with open(name, "wb") as f:
        for i in range(size // 512):
            f.write(i.to_bytes(8, "little") + bytes(504))


def file_pattern(name: str) -> str:
    return f"{os.getpid()}-{name}"


def file_path(*names: str, base_dir: str | None = None) -> Any:
    """Paths ``<TEST_DIR>/<pid>-<name>`` removed at exit (one path for one name)."""
    paths = [os.path.join(base_dir or test_dir, file_pattern(n)) for n in names]

    def remove() -> None:
        for p in paths:
            try:
                os.remove(p)
            except OSError:
                pass
    atexit.register(remove)
    return paths[0] if len(paths) == 1 else paths


class FilePath:
    """Context manager for ``file_path`` names, removed on exit."""

    def __init__(self, *names: str, base_dir: str | None = None) -> None:
        self.paths = [os.path.join(base_dir or test_dir, file_pattern(n)) for n in names]

    def __enter__(self) -> Any:
        return self.paths[0] if len(self.paths) == 1 else self.paths

    def __exit__(self, *exc: object) -> None:
        for p in self.paths:
            try:
                os.remove(p)
            except OSError:
                pass


# --- filters and logging -------------------------------------------------------

_RATE_RE = re.compile(r"[0-9]* ops; [0-9\/:. sec]* "
                      r"\([0-9\/.inf]* [EPTGMKiBbytes]*\/sec and [0-9\/.inf]* ops\/sec\)")


def filter_win32(msg: str) -> str:
    return msg.replace("\r", "")


def filter_qemu_io(msg: str) -> str:
    """qemu-io's rate line, whose numbers change from run to run."""
    return _RATE_RE.sub("X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)", filter_win32(msg))


def filter_chown(msg: str) -> str:
    return re.sub("chown", "chmod", msg)


def filter_qmp_event(event: QMPMessage) -> QMPMessage:
    """An event with its timestamp replaced by ``SECS``/``USECS``."""
    event = dict(event)
    if "timestamp" in event:
        event["timestamp"] = {"seconds": "SECS", "microseconds": "USECS"}
    return event


def filter_qmp(qmsg: Any, filter_fn: Callable[[Any, Any], Any]) -> Any:
    """Apply ``filter_fn(key, value)`` to every leaf of a QMP message (in place)."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(qmsg, list):
        items = list(enumerate(qmsg))
    elif isinstance(qmsg, dict):
        items = list(qmsg.items())
    else:
        return filter_fn(None, qmsg)
    for k, v in items:
        if isinstance(v, (dict, list)):
            qmsg[k] = filter_qmp(v, filter_fn)
        else:
            qmsg[k] = filter_fn(k, v)
    return qmsg


def filter_testfiles(msg: str) -> str:
    pref1 = os.path.join(test_dir, f"{os.getpid()}-")
    pref2 = os.path.join(test_dir, "")
    return msg.replace(pref1, "TEST_DIR/PID-").replace(pref2, "TEST_DIR/")


def filter_qmp_testfiles(qmsg: Any) -> Any:
    return filter_qmp(qmsg, lambda _k, v: filter_testfiles(v) if isinstance(v, str) else v)


def filter_generated_node_ids(msg: str) -> str:
    return re.sub("#block[0-9]+", "NODE_NAME", msg)


def filter_qmp_generated_node_ids(qmsg: Any) -> Any:
    return filter_qmp(
        qmsg, lambda _k, v: filter_generated_node_ids(v) if isinstance(v, str) else v)


def filter_imgfmt(msg: str) -> str:
    return msg.replace(imgfmt, "IMGFMT")


def filter_qmp_imgfmt(qmsg: Any) -> Any:
    return filter_qmp(qmsg, lambda _k, v: filter_imgfmt(v) if isinstance(v, str) else v)


def filter_img_info(output: str, filename: str) -> str:
    lines = []
    for line in output.split("\n"):
        if "disk size" in line or "actual-size" in line:
            continue
        line = line.replace(filename, "TEST_IMG")
        line = filter_testfiles(line)
        line = line.replace(imgfmt, "IMGFMT")
        line = re.sub("iters: [0-9]+", "iters: XXX", line)
        line = re.sub("uuid: [-a-f0-9]+", "uuid: XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX", line)
        line = re.sub("cid: [0-9]+", "cid: XXXXXXXXXX", line)
        lines.append(line)
    return "\n".join(lines)


def filter_nbd_exports(output: str) -> str:
    return re.sub(r"((min|opt|max) block): [0-9]+", r"\1: XXX", output)


def ordered_qmp(qmsg: Any, conv_keys: bool = True) -> Any:
    """A QMP value with dict keys sorted (and ``_``->``-`` at the top when asked)."""
    if isinstance(qmsg, list):
        return [ordered_qmp(atom) for atom in qmsg]
    if isinstance(qmsg, dict):
        od: OrderedDict[str, Any] = OrderedDict()
        for k, v in sorted(qmsg.items()):
            if conv_keys:
                k = k.replace("_", "-")
            od[k] = ordered_qmp(v, conv_keys=False)
        return od
    return qmsg


def log(msg: Any, filters: Iterable[Filter] = (), indent: int | None = None) -> None:
    """Log to the test output (stdout once ``activate_logging()`` ran); dicts as sorted JSON."""
    for flt in filters:
        msg = flt(msg)
    if isinstance(msg, (dict, list)):
        do_sort = not isinstance(msg, OrderedDict)
        test_logger.info(json.dumps(msg, sort_keys=do_sort, indent=indent))
    else:
        test_logger.info(msg)


def activate_logging(stream: Any = None) -> None:
    """Send ``log()`` output to ``stream`` (stdout), as script-style iotests need."""
    handler = logging.StreamHandler(stream=stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    test_logger.addHandler(handler)
    test_logger.setLevel(logging.INFO)
    test_logger.propagate = False


# --- the VM --------------------------------------------------------------------

class VMLaunchFailure(Exception):
    """The VM process did not come up; carries its exit code, command line and log."""

    def __init__(self, exitcode: int | None, command: str, output: str) -> None:
        super().__init__(exitcode, command, output)
        self.exitcode, self.command, self.output = exitcode, command, output

    def __str__(self) -> str:
        return (f"VM launch failed (exit code {self.exitcode}): {self.command}\n"
                f"Output: {self.output}")


class AbnormalShutdown(Exception):
    """The VM did not shut down cleanly and had to be killed."""


# 6.0's x-blockdev-reopen took one node's options where 7.2's blockdev-reopen
# takes a list; the argument path in 7.2's type errors gains that list index.
# Only these texts differ when the command is translated (see README.md).
_REOPEN_ERROR_MAP: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Invalid parameter type for 'options\[0\]\.(.*)', expected: (.*)$"),
     r"Invalid parameter type for '\1', expected: \2"),
    (re.compile(r"^Parameter '(?:options\[0\]\.)?driver' does not accept value '(.*)'$"),
     r"Invalid parameter '\1'"),
]

_live_vms: list[VM] = []


def _kill_live_vms() -> None:
    for vm in list(_live_vms):
        vm.kill()


atexit.register(_kill_live_vms)


class VM:
    """A block daemon under test: blockd (default) or real QEMU (``IOTESTS_VM=qemu``).

    Like QEMU's ``QEMUMachine`` the Python side listens on the monitor socket and
    the daemon connects out to it; its stdout and stderr go to a log file that
    ``get_log()`` returns after ``shutdown()``.
    """

    def __init__(self, path_suffix: str = "", kind: str | None = None) -> None:
        self.kind = kind or vm_kind
        self._name = f"qemu{path_suffix}-{os.getpid()}"
        self._args: list[str] = []
        self._post_launch: list[tuple[str, dict[str, Any]]] = []
        self._num_drives = 0
        self._machine: str | None = None
        self._events: list[QMPMessage] = []
        self._popen: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._iolog: str | None = None
        self._quit_issued = False
        self._launched = False
        self._qmp_timer = 15.0
        self._monitor_path = os.path.join(sock_dir, f"{self._name}-monitor.sock")
        self._log_path = os.path.join(test_dir, f"{self._name}.log")
        self._pidfile = os.path.join(test_dir, f"{self._name}.pid")
        self._command: list[str] = []

    # --- command line builders (each returns self, as QEMU's) ---

    def _opt(self, name: str) -> str:
        return ("--" if self.kind == "blockd" else "-") + name

    def add_args(self, *args: str) -> VM:
        self._args.extend(args)
        return self

    def add_blockdev(self, opts: str | dict[str, Any]) -> VM:
        self._args += [self._opt("blockdev"),
                       opts if isinstance(opts, str) else json.dumps(opts)]
        return self

    def add_object(self, opts: str) -> VM:
        self._args += [self._opt("object"), opts]
        return self

    def add_device(self, opts: str) -> VM:
        if self.kind == "qemu":
            self._args += ["-device", opts]
        else:
            # blockd (like qemu-storage-daemon) has no -device option: the device
            # is created with device_add right after the monitor is up.
            self._post_launch.append(("device_add", _keyval_to_dict(opts, "driver")))
        return self

    def add_drive_raw(self, opts: str) -> VM:
        self._require_qemu("-drive")
        self._args += ["-drive", opts]
        return self

    def add_drive(self, path: str | None, opts: str = "", interface: str = "virtio",
                  img_format: str | None = None) -> VM:
        """``-drive if=..,id=drive<N>,...`` (real QEMU only: blockd has no -drive)."""
        self._require_qemu("-drive")
        options = [f"if={interface}", f"id=drive{self._num_drives}"]
        if path is not None:
            options += [f"file={path}", f"format={img_format or imgfmt}",
                        f"cache={cachemode}", f"aio={aiomode}"]
        if opts:
            options.append(opts)
        self._args += ["-drive", ",".join(options)]
        self._num_drives += 1
        return self

    def add_incoming(self, addr: str) -> VM:
        self._require_qemu("-incoming")
        self._args += ["-incoming", addr]
        return self

    def add_paused(self) -> VM:
        self._require_qemu("-S")
        self._args.append("-S")
        return self

    def set_machine(self, machine_type: str) -> VM:
        self._machine = machine_type
        return self

    def _require_qemu(self, what: str) -> None:
        if self.kind != "qemu":
            raise NotImplementedError(
                f"{what} has no blockd equivalent (blockd takes qemu-storage-daemon's "
                "command line): use add_blockdev()/blockdev-add instead")

    # --- life cycle ---

    def _base_args(self) -> list[str]:
        if self.kind == "blockd":
            return [*blockd_argv, "--chardev", f"socket,id=mon,path={self._monitor_path}",
                    "--monitor", "mon", "--pidfile", self._pidfile]
        # -S: no guest code ever runs, so TCG burns no CPU; the block layer,
        # QMP and HMP work the same in a stopped VM.
        return [qemu_prog, "-display", "none", "-nodefaults", "-S",
                "-machine", self._machine or qemu_default_machine,
                "-chardev", f"socket,id=mon,path={self._monitor_path}",
                "-mon", "chardev=mon,mode=control",
                *shlex.split(os.environ.get("QEMU_OPTIONS", ""))]

    def launch(self) -> None:
        """Start the daemon and accept its QMP connection (greeting + negotiation)."""
        if self._launched:
            raise RuntimeError("VM already launched")
        if os.path.exists(self._monitor_path):
            os.unlink(self._monitor_path)
        self._iolog = None
        self._quit_issued = False
        self._events = []
        self._qmp = QEMUMonitorProtocol(self._monitor_path, server=True)
        self._command = [*self._base_args(), *self._args]
        logfile = open(self._log_path, "wb")
        try:
            self._popen = subprocess.Popen(self._command, stdin=subprocess.DEVNULL,
                                           stdout=logfile, stderr=subprocess.STDOUT)
        finally:
            logfile.close()
        self._launched = True
        _live_vms.append(self)
        try:
            self._qmp.accept(self._qmp_timer)
        except Exception as exc:
            # A daemon that rejects its command line may have connected (and
            # closed) before printing why: let it finish its message first.
            try:
                assert self._popen is not None
                self._popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self._stop_process(kill=True)
            self._post_shutdown()
            raise VMLaunchFailure(self.exitcode(), shlex.join(self._command),
                                  self._iolog or "") from exc
        self._qmp.settimeout(self._qmp_timer)
        for cmd, args in self._post_launch:
            res = self.qmp(cmd, args_dict=args)
            if "error" in res:
                raise VMLaunchFailure(None, f"{cmd} {json.dumps(args)}", json.dumps(res))

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def exitcode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def get_pid(self) -> int | None:
        return self._popen.pid if self.is_running() and self._popen else None

    def _stop_process(self, kill: bool = False, timeout: float = 30) -> None:
        if self._popen is None:
            return
        if kill and self._popen.poll() is None:
            self._popen.kill()
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
            raise

    def _post_shutdown(self) -> None:
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:
                pass
            self._qmp = None
        try:
            with open(self._log_path, errors="replace") as f:
                self._iolog = f.read()
        except OSError:
            self._iolog = ""
        for path in (self._monitor_path, self._pidfile):
            try:
                os.unlink(path)
            except OSError:
                pass
        if self in _live_vms:
            _live_vms.remove(self)
        if self._popen is not None and (self._popen.returncode or 0) < 0:
            logger.warning("%s received signal %d: %s", self.kind, -self._popen.returncode,
                           shlex.join(self._command))
        self._launched = False

    def shutdown(self, hard: bool = False, timeout: float = 30) -> None:
        """``quit`` over QMP and wait for the exit; kill (and raise) when that fails."""
        if not self._launched:
            return
        try:
            if hard or not self.is_running():
                self._stop_process(kill=True)
            else:
                try:
                    if not self._quit_issued:
                        self.qmp("quit")
                except Exception:
                    # quit can race with the exit; a dead process is fine here
                    if self.is_running():
                        raise
                self._close_qmp()
                self._stop_process(timeout=timeout)
        except Exception as exc:
            self._stop_process(kill=True)
            self._post_shutdown()
            raise AbnormalShutdown("Could not perform graceful shutdown") from exc
        self._post_shutdown()

    def _close_qmp(self) -> None:
        """Close the monitor; EOF is expected (and tolerated) only after ``quit``."""
        if self._qmp is None:
            return
        try:
            self._qmp.close()
        except EOFError:
            if not self._quit_issued:
                raise
        finally:
            self._qmp = None

    def kill(self) -> None:
        self.shutdown(hard=True)

    def wait(self, timeout: float = 30) -> None:
        """Wait for the daemon to exit by itself (e.g. after a ``quit`` the test sent)."""
        self._quit_issued = True
        self.shutdown(timeout=timeout)

    def get_log(self) -> str | None:
        """The daemon's stdout+stderr (complete once it has shut down)."""
        if self._iolog is None and os.path.exists(self._log_path):
            with open(self._log_path, errors="replace") as f:
                return f.read()
        return self._iolog

    # --- QMP ---

    @staticmethod
    def _qmp_args(conv_keys: bool, args: dict[str, Any]) -> dict[str, Any]:
        if conv_keys:
            return {k.replace("_", "-"): v for k, v in args.items()}
        return args

    def qmp(self, cmd: str, args_dict: dict[str, Any] | None = None,
            conv_keys: bool | None = None, **args: Any) -> QMPMessage:
        """Send a command; the raw reply (``return`` or ``error``), never raising on errors."""
        if args_dict is not None:
            assert not args and conv_keys is None
            args, conv_keys = args_dict, False
        qmp_args = self._qmp_args(True if conv_keys is None else conv_keys, args)
        if self._qmp is None:
            raise RuntimeError("VM is not running")
        if self.kind == "qemu" and cmd == "x-blockdev-reopen":
            return self._reopen_on_qemu72(qmp_args)
        req: QMPMessage = {"execute": cmd}
        if qmp_args:
            req["arguments"] = qmp_args
        reply = self._qmp.cmd_obj(req)
        if cmd == "quit" and "return" in reply:
            self._quit_issued = True
        return reply

    def _reopen_on_qemu72(self, options: dict[str, Any]) -> QMPMessage:
        """x-blockdev-reopen (QEMU 6.0) as 7.2's ``blockdev-reopen options:[...]``."""
        assert self._qmp is not None
        reply = self._qmp.cmd_obj({"execute": "blockdev-reopen",
                                   "arguments": {"options": [options]}})
        err = reply.get("error")
        if isinstance(err, dict) and isinstance(err.get("desc"), str):
            for pattern, repl in _REOPEN_ERROR_MAP:
                if pattern.match(err["desc"]):
                    reply = {"error": {**err, "desc": pattern.sub(repl, err["desc"])}}
                    logger.debug("QEMU 7.2 error text %r reported as 6.0's %r",
                                 err["desc"], reply["error"]["desc"])
                    break
        return reply

    def cmd(self, cmd: str, args_dict: dict[str, Any] | None = None,
            conv_keys: bool | None = None, **args: Any) -> Any:
        """The command's return value; raise ``QMPCommandError`` on an error reply."""
        reply = self.qmp(cmd, args_dict, conv_keys, **args)
        if "error" in reply:
            raise QMPCommandError(cmd, reply)
        return reply["return"]

    command = cmd  # QEMU 7.2's name for cmd()

    def qmp_log(self, cmd: str, filters: Iterable[Filter] = (), indent: int | None = None,
                **kwargs: Any) -> QMPMessage:
        full_cmd = OrderedDict((("execute", cmd), ("arguments", ordered_qmp(kwargs))))
        log(full_cmd, filters, indent=indent)
        result = self.qmp(cmd, **kwargs)
        log(result, filters, indent=indent)
        return result

    def hmp(self, command_line: str, use_log: bool = False) -> QMPMessage:
        args: dict[str, Any] = {"command-line": command_line}
        if use_log:
            return self.qmp_log("human-monitor-command", **args)
        return self.qmp("human-monitor-command", args_dict=args)

    def hmp_qemu_io(self, drive: str, cmd: str, use_log: bool = False,
                    qdev: bool = False) -> QMPMessage:
        """HMP ``qemu-io``: the reply is ``{'return': ''}``, the output goes to the log."""
        d = "-d " if qdev else ""
        return self.hmp(f'qemu-io {d}{drive} "{cmd}"', use_log)

    def pause_drive(self, drive: str, event: str | None = None) -> None:
        for ev in ([event] if event else ["read_aio", "write_aio"]):
            self.hmp_qemu_io(drive, f"break {ev} bp_{drive}")

    def resume_drive(self, drive: str) -> None:
        self.hmp_qemu_io(drive, f"remove_break bp_{drive}")

    # --- events ---

    @staticmethod
    def event_match(event: Any, match: Any = None) -> bool:
        """``match`` is a sub-dict of ``event`` (recursively; ``None`` matches anything)."""
        if match is None:
            return True
        try:
            for key in match:
                if key not in event or not VM.event_match(event[key], match[key]):
                    return False
            return True
        except TypeError:
            return bool(match == event)

    def _pull(self, wait: bool | float) -> QMPMessage | None:
        assert self._qmp is not None
        if wait is not False and wait is not True:
            wait = float(wait)
        return self._qmp.pull_event(wait=wait)

    def get_qmp_event(self, wait: bool | float = False) -> QMPMessage | None:
        if not wait and self._events:
            return self._events.pop(0)
        return self._pull(wait)

    def get_qmp_events(self, wait: bool | float = False) -> list[QMPMessage]:
        """Every queued event (cached ones included); with ``wait``, at least one."""
        assert self._qmp is not None
        if wait is not False and wait is not True:
            wait = float(wait)
        events: list[QMPMessage] = self._qmp.get_events(wait=wait)
        events.extend(self._events)
        self._events.clear()
        return events

    def get_qmp_events_filtered(self, wait: bool | float = 60.0) -> list[QMPMessage]:
        return [filter_qmp_event(ev) for ev in self.get_qmp_events(wait=wait)]

    def clear_events(self) -> None:
        self._events.clear()
        if self._qmp is not None:
            self._qmp.clear_events()

    def events_wait(self, events: Sequence[tuple[str, Any]],
                    timeout: float = 60.0) -> QMPMessage | None:
        """The first event matching one of ``(name, match)``; others are kept for later."""
        def _match(event: QMPMessage) -> bool:
            return any(event["event"] == name and self.event_match(event, match)
                       for name, match in events)

        for event in self._events:
            if _match(event):
                self._events.remove(event)
                return event
        while True:
            ev = self._pull(timeout)
            if ev is None:
                return None
            if _match(ev):
                return ev
            self._events.append(ev)

    def event_wait(self, name: str, timeout: float = 60.0,
                   match: Any = None) -> QMPMessage | None:
        return self.events_wait([(name, match)], timeout)

    # --- jobs and queries ---

    def run_job(self, job: str, auto_finalize: bool = True, auto_dismiss: bool = False,
                pre_finalize: Callable[[], None] | None = None, cancel: bool = False,
                wait: float = 60.0, filters: Iterable[Filter] = ()) -> str | None:
        """Drive a job to its end as QEMU's run_job: log its events, finalize/dismiss
        when asked, return the job's error (None on success)."""
        filters = list(filters)
        match_device = {"data": {"device": job}}
        match_id = {"data": {"id": job}}
        events = [("BLOCK_JOB_COMPLETED", match_device),
                  ("BLOCK_JOB_CANCELLED", match_device),
                  ("BLOCK_JOB_ERROR", match_device),
                  ("BLOCK_JOB_READY", match_device),
                  ("BLOCK_JOB_PENDING", match_id),
                  ("JOB_STATUS_CHANGE", match_id)]
        error = None
        while True:
            raw = self.events_wait(events, timeout=wait)
            if raw is None:
                raise TimeoutError(f"no event for job {job}")
            ev = filter_qmp_event(raw)
            if ev["event"] != "JOB_STATUS_CHANGE":
                log(ev, filters=filters)
                continue
            status = ev["data"]["status"]
            if status == "aborting":
                for j in self.qmp("query-jobs")["return"]:
                    if j["id"] == job:
                        error = j["error"]
                        log(f"Job failed: {j['error']}", filters=filters)
            elif status == "ready":
                self.qmp_log("job-complete", id=job, filters=filters)
            elif status == "pending" and not auto_finalize:
                if pre_finalize:
                    pre_finalize()
                if cancel:
                    self.qmp_log("job-cancel", id=job, filters=filters)
                else:
                    self.qmp_log("job-finalize", id=job, filters=filters)
            elif status == "concluded" and not auto_dismiss:
                self.qmp_log("job-dismiss", id=job, filters=filters)
            elif status == "null":
                return error

    def blockdev_create(self, options: dict[str, Any], job_id: str = "job0",
                        filters: Iterable[Filter] | None = None) -> str | None:
        filters = list(filters) if filters is not None else [filter_qmp_testfiles]
        result = self.qmp_log("blockdev-create", filters=filters, job_id=job_id,
                              options=options)
        if "return" in result:
            assert result["return"] == {}
            return self.run_job(job_id, filters=filters)
        return result["error"]["desc"]  # type: ignore[no-any-return]

    def node_info(self, node_name: str) -> QMPMessage | None:
        for node in self.qmp("query-named-block-nodes")["return"]:
            if node["node-name"] == node_name:
                return node  # type: ignore[no-any-return]
        return None

    def query_bitmaps(self) -> dict[str, Any]:
        res = self.qmp("query-named-block-nodes", flat=True)
        return {n["node-name"]: n["dirty-bitmaps"] for n in res["return"]
                if "dirty-bitmaps" in n}

    def get_bitmap(self, node_name: str, bitmap_name: str) -> Any:
        for bitmap in self.query_bitmaps().get(node_name, []):
            if bitmap.get("name") == bitmap_name:
                return bitmap
        return None


class QMPCommandError(Exception):
    """An error reply to ``VM.cmd()``."""

    def __init__(self, cmd: str, reply: QMPMessage) -> None:
        super().__init__(f"{cmd}: {reply['error'].get('desc')}")
        self.reply = reply
        self.error_class = reply["error"].get("class")


def _keyval_to_dict(opts: str, implied: str) -> dict[str, Any]:
    """``driver,key=value,...`` (QEMU's -device syntax) as QMP arguments."""
    out: dict[str, Any] = {}
    for i, part in enumerate(opts.split(",")):
        if "=" not in part and i == 0:
            out[implied] = part
            continue
        k, _, v = part.partition("=")
        out[k] = v
    return out


# --- test cases ----------------------------------------------------------------

_INDEX_RE = re.compile(r"([^\[]+)\[([^\]]+)\]")


class QMPTestCase(unittest.TestCase):
    """unittest.TestCase with QEMU's QMP assertions; ``self.vm`` is set by setUp()."""

    maxDiff = None
    vm: VM

    def dictpath(self, d: Any, path: str) -> Any:
        """``a/b[0]/c`` inside ``d``; fails the test when a component is missing."""
        for component in path.split("/"):
            m = _INDEX_RE.match(component)
            idx = 0
            if m:
                component, idx_s = m.groups()
                idx = int(idx_s)
            if not isinstance(d, dict) or component not in d:
                self.fail(f'failed path traversal for "{path}" in "{d}"')
            d = d[component]
            if m:
                if not isinstance(d, list):
                    self.fail(f'path component "{component}" in "{path}" is not a list '
                              f'in "{d}"')
                try:
                    d = d[idx]
                except IndexError:
                    self.fail(f'invalid index "{idx}" in path "{path}" in "{d}"')
        return d

    def assert_qmp_absent(self, d: Any, path: str) -> None:
        try:
            result = self.dictpath(d, path)
        except AssertionError:
            return
        self.fail(f'path "{path}" has value "{result}"')

    def assert_qmp(self, d: Any, path: str, value: Any) -> None:
        """The value at ``path`` equals ``value`` (a non-empty list: any of them)."""
        result = self.dictpath(d, path)
        if isinstance(value, list) and value != []:
            for v in value:
                if result == v:
                    return
            self.fail(f'no match for "{result}" in {value}')
        else:
            self.assertEqual(result, value, f'"{path}" is "{result}", expected "{value}"')

    def assert_no_active_block_jobs(self) -> None:
        result = self.vm.qmp("query-block-jobs")
        self.assert_qmp(result, "return", [])

    def assert_has_block_node(self, node_name: str | None = None,
                              file_name: str | None = None) -> None:
        """Some node has that node-name and/or file (non-flat query-named-block-nodes)."""
        def check_equal_or_none(a: Any, b: Any) -> bool:
            return a is None or b is None or a == b
        result = self.vm.qmp("query-named-block-nodes")
        for x in result["return"]:
            if check_equal_or_none(x.get("node-name"), node_name) and \
               check_equal_or_none(x.get("file"), file_name):
                return
        self.fail(f"Cannot find {node_name} {file_name} in result:\n{result}")

    def assert_json_filename_equal(self, json_filename: str, reference: Any) -> None:
        self.assertEqual(json_filename[:5], "json:")
        self.assertEqual(flatten_qmp_object(json.loads(json_filename[5:])),
                         flatten_qmp_object(reference))

    def cancel_and_wait(self, drive: str = "drive0", force: bool = False,
                        resume: bool = False, wait: float = 60.0) -> QMPMessage | None:
        """block-job-cancel, then the job's COMPLETED/CANCELLED event; no jobs left."""
        result = self.vm.qmp("block-job-cancel", device=drive, force=force)
        self.assert_qmp(result, "return", {})
        if resume:
            self.vm.resume_drive(drive)
        cancelled = False
        event_seen: QMPMessage | None = None
        while not cancelled:
            for event in self.vm.get_qmp_events(wait=wait):
                if event["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
                    self.assert_qmp(event, "data/device", drive)
                    event_seen = event
                    cancelled = True
                elif event["event"] == "JOB_STATUS_CHANGE":
                    self.assert_qmp(event, "data/id", drive)
        self.assert_no_active_block_jobs()
        return event_seen

    def wait_until_completed(self, drive: str = "drive0", check_offset: bool = True,
                             wait: float = 60.0, error: str | None = None) -> QMPMessage:
        """The job's BLOCK_JOB_COMPLETED (no error, offset == len); then no active jobs."""
        while True:
            for event in self.vm.get_qmp_events(wait=wait):
                if event["event"] == "BLOCK_JOB_COMPLETED":
                    self.assert_qmp(event, "data/device", drive)
                    if error is None:
                        self.assert_qmp_absent(event, "data/error")
                        if check_offset:
                            self.assert_qmp(event, "data/offset", event["data"]["len"])
                    else:
                        self.assert_qmp(event, "data/error", error)
                    self.assert_no_active_block_jobs()
                    return event
                if event["event"] == "JOB_STATUS_CHANGE":
                    self.assert_qmp(event, "data/id", drive)

    def wait_ready(self, drive: str = "drive0") -> QMPMessage | None:
        return self.vm.events_wait([
            ("BLOCK_JOB_READY", {"data": {"type": "mirror", "device": drive}}),
            ("BLOCK_JOB_READY", {"data": {"type": "commit", "device": drive}}),
        ])

    def wait_ready_and_cancel(self, drive: str = "drive0") -> None:
        self.wait_ready(drive=drive)
        event = self.cancel_and_wait(drive=drive)
        self.assertEqual(event and event["event"], "BLOCK_JOB_COMPLETED")
        self.assert_qmp(event, "data/type", "mirror")
        self.assert_qmp(event, "data/offset", event["data"]["len"] if event else None)

    def complete_and_wait(self, drive: str = "drive0", wait_ready: bool = True,
                          completion_error: str | None = None) -> None:
        if wait_ready:
            self.wait_ready(drive=drive)
        result = self.vm.qmp("block-job-complete", device=drive)
        if completion_error is None:
            self.assert_qmp(result, "return", {})
        else:
            self.assert_qmp(result, "error/desc", completion_error)
        event = self.wait_until_completed(drive=drive)
        self.assertTrue(event["data"]["type"] in ["mirror", "commit"])

    def pause_wait(self, job_id: str = "job0") -> None:
        deadline = time.monotonic() + 3
        while True:
            if time.monotonic() > deadline:
                self.fail(f"Timeout waiting for job {job_id} to pause")
            for job in self.vm.qmp("query-block-jobs")["return"]:
                if job["device"] == job_id and job["paused"] and not job["busy"]:
                    return
            time.sleep(0.01)

    def pause_job(self, job_id: str = "job0", wait: bool = True) -> None:
        result = self.vm.qmp("block-job-pause", device=job_id)
        self.assert_qmp(result, "return", {})
        if wait:
            self.pause_wait(job_id)

    def case_skip(self, reason: str) -> None:
        """Skip this case (check still prints ``.`` for it, as QEMU's runner)."""
        case_notrun(reason)
        self.skipTest(reason)


def flatten_qmp_object(obj: Any, output: dict[str, Any] | None = None,
                       basestr: str = "") -> dict[str, Any]:
    if output is None:
        output = {}
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            flatten_qmp_object(item, output, f"{basestr}{i}.")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            flatten_qmp_object(value, output, f"{basestr}{key}.")
    else:
        output[basestr[:-1]] = obj
    return output


def qmp_to_opts(obj: Any) -> str:
    """A QMP dict as QEMU's dotted ``key=value`` option string."""
    args = []
    for key, value in flatten_qmp_object(obj).items():
        value = str(value).replace(",", ",,")
        args.append(f"{key}={value}")
    return ",".join(args)


# --- skipping ------------------------------------------------------------------

class NotRun(Exception):
    """Raised instead of exiting when a test is not suitable (see notrun())."""


def notrun(reason: str) -> None:
    """Mark the whole test as not run (``<seq>.notrun`` for check) and exit."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, f"{seq}.notrun"), "w") as f:
            f.write(reason + "\n")
    except OSError:
        pass
    logger.warning("%s not run: %s", seq, reason)
    sys.exit(0)


def case_notrun(reason: str) -> None:
    """Record a skipped case in ``<seq>.casenotrun`` (check lists them)."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, f"{seq}.casenotrun"), "a") as f:
            f.write(f"    [case not run] {reason}\n")
    except OSError:
        pass


def supported_formats(read_only: bool = False) -> list[str]:
    """Block drivers the VM binary knows (``-drive format=help`` on QEMU)."""
    key = (vm_kind, read_only)
    if key not in _format_cache:
        if vm_kind == "qemu":
            out = subprocess.run([qemu_prog, "-drive", "format=help"], capture_output=True,
                                 text=True, check=False).stdout.splitlines()
            line = out[1 if read_only else 0] if len(out) > 1 else ""
            _format_cache[key] = line.split(":", 1)[1].split() if ":" in line else []
        else:
            from blockd.drivers.base import registered_drivers
            _format_cache[key] = registered_drivers()
    return _format_cache[key]


_format_cache: dict[tuple[str, bool], list[str]] = {}


def skip_if_unsupported(required_formats: Sequence[str] = (),
                        read_only: bool = False) -> Callable[[_F], _F]:
    """Skip a test case unless the VM supports all ``required_formats``."""
    def skip_test_decorator(func: _F) -> _F:
        def func_wrapper(test_case: QMPTestCase, *args: Any, **kwargs: Any) -> Any:
            fmts = list(required_formats)
            missing = [f for f in fmts if f not in supported_formats(read_only)]
            if missing:
                msg = f"{test_case}: formats {missing} are not whitelisted"
                test_case.case_skip(msg)
                return None
            return func(test_case, *args, **kwargs)
        func_wrapper.__name__ = func.__name__
        func_wrapper.__doc__ = func.__doc__
        return func_wrapper  # type: ignore[return-value]
    return skip_test_decorator


def skip_for_formats(formats: Sequence[str] = ()) -> Callable[[_F], _F]:
    def skip_test_decorator(func: _F) -> _F:
        def func_wrapper(test_case: QMPTestCase, *args: Any, **kwargs: Any) -> Any:
            if imgfmt in formats:
                test_case.case_skip(f"{test_case}: Skipped for format {imgfmt}")
                return None
            return func(test_case, *args, **kwargs)
        func_wrapper.__name__ = func.__name__
        return func_wrapper  # type: ignore[return-value]
    return skip_test_decorator


def skip_if_user_is_root(func: _F) -> _F:
    def func_wrapper(*args: Any, **kwargs: Any) -> Any:
        if os.getuid() == 0:
            case_notrun(f"{args[0]}: cannot be run as root")
            return None
        return func(*args, **kwargs)
    func_wrapper.__name__ = func.__name__
    return func_wrapper  # type: ignore[return-value]


def verify_image_format(supported_fmts: Sequence[str] = (),
                        unsupported_fmts: Sequence[str] = ()) -> None:
    if "generic" in supported_fmts and imgfmt not in unsupported_fmts:
        return
    not_sup = supported_fmts and imgfmt not in supported_fmts
    if not_sup or imgfmt in unsupported_fmts:
        notrun(f"not suitable for this image format: {imgfmt}")


def verify_protocol(supported: Sequence[str] = (), unsupported: Sequence[str] = ()) -> None:
    if "generic" in supported:
        return
    if (supported and imgproto not in supported) or imgproto in unsupported:
        notrun(f"not suitable for this protocol: {imgproto}")


def verify_platform(supported: Sequence[str] = (), unsupported: Sequence[str] = ()) -> None:
    if any(sys.platform.startswith(p) for p in unsupported):
        notrun("not suitable for this OS: " + sys.platform)
    if supported and not any(sys.platform.startswith(p) for p in supported):
        notrun("not suitable for this OS: " + sys.platform)


def verify_cache_mode(supported: Sequence[str] = ()) -> None:
    if supported and cachemode not in supported:
        notrun(f"not suitable for this cache mode: {cachemode}")


def verify_aio_mode(supported: Sequence[str] = ()) -> None:
    if supported and aiomode not in supported:
        notrun(f"not suitable for this aio mode: {aiomode}")


def execute_setup_common(supported_fmts: Sequence[str] = (),
                         supported_platforms: Sequence[str] = (),
                         supported_cache_modes: Sequence[str] = (),
                         supported_aio_modes: Sequence[str] = (),
                         unsupported_fmts: Sequence[str] = (),
                         supported_protocols: Sequence[str] = (),
                         unsupported_protocols: Sequence[str] = (),
                         required_fmts: Sequence[str] = ()) -> bool:
    """The checks main() runs before the cases; returns whether ``-d`` was given."""
    debug = "-d" in sys.argv
    if debug:
        sys.argv.remove("-d")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARN)
    verify_image_format(supported_fmts, unsupported_fmts)
    verify_protocol(supported_protocols, unsupported_protocols)
    verify_platform(supported=supported_platforms)
    verify_cache_mode(supported_cache_modes)
    verify_aio_mode(supported_aio_modes)
    missing = [f for f in required_fmts if f not in supported_formats()]
    if missing:
        notrun(f"formats {missing} are not whitelisted")
    return debug


class _ReproducibleResult(unittest.TextTestResult):
    """Print skipped cases as ``.`` so the output does not depend on the build."""

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super(unittest.TextTestResult, self).addSkip(test, reason)
        if self.showAll:
            self.stream.writeln(f"skipped {reason!r}")
        elif self.dots:
            self.stream.write(".")
            self.stream.flush()


def summarize_unittest_output(text: str) -> str:
    """Strip the run time and the skip count, as check's reference output expects."""
    text = re.sub(r"Ran (\d+) tests? in [\d.]+s", r"Ran \1 tests", text)
    return re.sub(r"OK \(skipped=\d+\)", "OK", text)


def execute_unittest(argv: list[str], debug: bool = False) -> None:
    """Run the calling module's test cases; summary on stdout after the log output."""
    output: Any = sys.stdout if debug else io.StringIO()
    runner = unittest.TextTestRunner(stream=output, descriptions=True,
                                     verbosity=2 if debug else 1,
                                     resultclass=_ReproducibleResult)  # type: ignore[arg-type]
    try:
        unittest.main(testRunner=runner, argv=argv)
    finally:
        if not debug:
            sys.stdout.flush()
            sys.stdout.write(summarize_unittest_output(output.getvalue()))
            sys.stdout.flush()


def main(supported_fmts: Sequence[str] = (), supported_platforms: Sequence[str] = (),
         supported_cache_modes: Sequence[str] = (), supported_aio_modes: Sequence[str] = (),
         unsupported_fmts: Sequence[str] = (), supported_protocols: Sequence[str] = (),
         unsupported_protocols: Sequence[str] = (), required_fmts: Sequence[str] = ()) -> None:
    """Run a unittest-style iotest (the calling module's cases)."""
    debug = execute_setup_common(supported_fmts, supported_platforms, supported_cache_modes,
                                 supported_aio_modes, unsupported_fmts, supported_protocols,
                                 unsupported_protocols, required_fmts)
    argv = [sys.argv[0], *sys.argv[1:]]
    execute_unittest(argv, debug)


def script_main(test_function: Callable[[], None], **kwargs: Any) -> None:
    """Run a script-style iotest: its log() output is the test output."""
    execute_setup_common(**kwargs)
    activate_logging()
    test_function()

