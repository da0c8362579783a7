"""Unit tests of blockd-img's command-line building blocks (no QEMU needed).

The expected values were measured on qemu-img 7.2 (see test_blockd_img_qemu.py
for the live comparisons).
"""

from __future__ import annotations

import io

import pytest

from blockd.tools.img_cmds.common import Console, ImgExit, OptionError
from blockd.tools.img_cmds.compare import compare_buffers, find_nonzero
from blockd.tools.img_cmds.convert import is_allocated_sectors, is_allocated_sectors_min
from blockd.tools.img_cmds.getopt import LongOpt, getopt
from blockd.tools.img_cmds.opts import (
    QCOW2_CREATE_OPTS,
    QemuOpts,
    has_help_option,
    is_valid_option_list,
    split_option_list,
)
from blockd.tools.img_cmds.progress import Progress
from blockd.tools.img_cmds.qjson import dump_human, qdict_order, to_json_pretty
from blockd.tools.img_cmds.sizes import SizeError, size_to_str, strtosz


def _con() -> Console:
    return Console(prog="qemu-img", out=io.StringIO(), err=io.StringIO())


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.0", 1),
        ("1.k", 1024),
        ("1.5m", 1572864),
        ("0X10", 16),
        (" +5", 5),
        ("1.9999999999999999999999k", 1024),  # the fraction wraps to 0, as in QEMU
        ("0.5k", 512),
        ("1.00000000001k", 1024),
        ("1b", 1),
        ("1B", 1),
        ("18446744073709551615", 18446744073709551615),
        ("7.999E", 9222219115350168960),
        ("0x1k", 1024),
    ],
)
def test_strtosz_accepts(text: str, value: int) -> None:
    assert strtosz(text) == value


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("1.5b", -22),
        ("1.5", -22),
        ("0x1.5k", -22),
        (".5k", -22),
        ("1 ", -22),
        ("1.5e3k", -22),
        ("0x", -22),
        ("00x10", -22),
        ("", -22),
        ("-1", -22),
        ("1kb", -22),
        ("1e3", -22),
        ("18446744073709551616", -34),
        ("16E", -34),
    ],
)
def test_strtosz_rejects(text: str, code: int) -> None:
    with pytest.raises(SizeError) as exc:
        strtosz(text)
    assert exc.value.code == code


def test_strtosz_warns_about_hex_suffix() -> None:
    seen: list[str] = []
    assert strtosz("0x2M", seen.append) == 2 << 20
    assert seen == ["Using a multiplier suffix on hex numbers is deprecated: 0x2M"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "0.999 KiB"),
        (200704, "196 KiB"),
        (1 << 30, "1 GiB"),
        (1572864, "1.5 MiB"),
        (1024000, "0.977 MiB"),
    ],
)
def test_size_to_str(value: int, text: str) -> None:
    assert size_to_str(value) == text


LONG = [LongOpt("output", True, "output"), LongOpt("backing-chain", False, "backing-chain")]


def test_getopt_permutes_and_abbreviates() -> None:
    opts, args = getopt(_con(), ["info", "x", "--out", "json", "-fqcow2", "--back"], ":f:hU", LONG)
    assert opts == [("output", "json"), ("f", "qcow2"), ("backing-chain", None)]
    assert args == ["x"]


def test_getopt_double_dash_ends_options() -> None:
    opts, args = getopt(_con(), ["resize", "-U", "--", "-1G"], ":f:hU", LONG)
    assert opts == [("U", None)]
    assert args == ["-1G"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "-z"], "unrecognized option '-z'"),
        (["create", "-zq"], "unrecognized option 'create'"),
        (["create", "x", "-zq"], "unrecognized option 'x'"),
        (["create", "-qz"], "unrecognized option '-qz'"),
        (["create", "-f"], "missing argument for option '-f'"),
        (["create", "--output"], "missing argument for option '--output'"),
        (["create", "--backing-chain=1"], "unrecognized option '--backing-chain=1'"),
        (["create", "--bogus"], "unrecognized option '--bogus'"),
    ],
)
def test_getopt_errors_name_what_qemu_img_names(argv: list[str], message: str) -> None:
    con = _con()
    with pytest.raises(ImgExit) as exc:
        getopt(con, argv, ":f:hqU", LONG)
    assert exc.value.code == 1
    assert isinstance(con.err, io.StringIO)
    assert con.err.getvalue() == (
        f"qemu-img: {message}\nTry 'qemu-img --help' for more information\n"
    )


def test_option_list_parsing_and_printing() -> None:
    assert split_option_list("a=1,b,nocow,c=,d=x,,,e=2") == [
        ("a", "1"),
        ("b", "on"),
        ("cow", "off"),
        ("c", ""),
        ("d", "x,"),
        ("e", "2"),
    ]
    assert is_valid_option_list("a=1,,")
    assert not is_valid_option_list(",,")
    assert not is_valid_option_list("a=1,")
    assert has_help_option("cluster_size=4k,help")
    opts = QemuOpts(list(QCOW2_CREATE_OPTS))
    opts.parse("cluster_size=64k,lazy_refcounts=yes,backing_file=x,,y,refcount_bits=0x10")
    opts.set_number("size", 1 << 20)
    assert opts.print_line() == (
        "cluster_size=65536 extended_l2=off compression_type=zlib size=1048576 "
        "backing_file=x,,y lazy_refcounts=yes refcount_bits=16"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("foo=1", "Invalid parameter 'foo'"),
        ("lazy_refcounts=maybe", "Parameter 'lazy_refcounts' expects 'on' or 'off'"),
        ("refcount_bits=abc", "Parameter 'refcount_bits' expects a number"),
        ("cluster_size=abc", "Parameter 'cluster_size' expects a non-negative number below 2^64"),
    ],
)
def test_option_errors(params: str, message: str) -> None:
    with pytest.raises(OptionError) as exc:
        QemuOpts(list(QCOW2_CREATE_OPTS)).parse(params)
    assert exc.value.msg == message


def test_json_uses_qdict_order_and_qemu_layout() -> None:
    info = {
        "filename": "o.qcow2",
        "format": "qcow2",
        "dirty-flag": False,
        "actual-size": 200704,
        "virtual-size": 1073741824,
        "cluster-size": 65536,
        "empty": {},
    }
    assert qdict_order(info) == [
        "empty",
        "virtual-size",
        "filename",
        "cluster-size",
        "format",
        "actual-size",
        "dirty-flag",
    ]
    text = to_json_pretty({"a": [], "b": {"c": "é\n"}})
    assert text == '{\n    "a": [\n    ],\n    "b": {\n        "c": "\\u00E9\\n"\n    }\n}'


def test_human_dump_of_format_specific_data() -> None:
    data = {"compat": "1.1", "lazy-refcounts": False, "refcount-bits": 16, "corrupt": False}
    assert dump_human(data, 1) == (
        "    compat: 1.1\n    lazy refcounts: false\n    refcount bits: 16\n    corrupt: false\n"
    )


def test_progress_prints_like_qemu() -> None:
    con = _con()
    prog = Progress(con, True, 2.0)
    prog.print(0, 100)
    for _ in range(4):
        prog.print(1.5625, 100)  # 1.56, 3.12 printed? only when > min_skip
    prog.print(100, 0)
    prog.end()
    assert isinstance(con.out, io.StringIO)
    assert con.out.getvalue() == (
        "    (0.00/100%)\r    (3.12/100%)\r    (6.25/100%)\r    (100.00/100%)\r\n"
    )


def test_sector_helpers() -> None:
    z = bytes(512)
    d = b"\x01" * 512
    assert find_nonzero(z * 3 + d) == 1536
    assert find_nonzero(z * 2) == -1
    assert compare_buffers(z + d + d, z + z + z) == (False, 512)
    assert compare_buffers(d + d + z, z + z + z) == (True, 1024)
    # A 2-sector hole between data does not split the write when -S is 8 sectors.
    buf = d + z + z + d + z * 16
    assert is_allocated_sectors(buf, 20, 0, 1) == (True, 1)
    assert is_allocated_sectors_min(buf, 20, 8, 0, 1) == (True, 4)


def _run(argv: list[str]) -> tuple[int, str, str]:
    from blockd.tools.img import run

    con = _con()
    rc = run(argv, con)
    assert isinstance(con.out, io.StringIO) and isinstance(con.err, io.StringIO)
    return rc, con.out.getvalue(), con.err.getvalue()


def test_help_and_version_exit_zero() -> None:
    rc, out, err = _run(["--help"])
    assert rc == 0 and err == ""
    assert out.startswith("qemu-img version 7.2")
    assert "  convert [" in out and "\nSupported formats: " in out
    assert _run(["info", "-h"])[0] == 0
    rc, out, _ = _run(["-V"])
    assert rc == 0 and out.startswith("qemu-img version 7.2")


def test_usage_errors() -> None:
    assert _run([]) == (
        1,
        "",
        "qemu-img: Not enough arguments\nTry 'qemu-img --help' for more information\n",
    )
    assert _run(["measure"])[2].startswith("qemu-img: Command not found: measure\n")
    assert _run(["-T", "x"]) == (0, "", "")
