"""qemu-io number parsing and printing, checked against values QEMU 7.2 prints."""

from __future__ import annotations

import errno

import pytest

from blockd.tools.qemuio.fmt import (
    CvtnumError,
    cvtnum,
    cvtnum_error,
    cvtstr,
    dump_buffer,
    report,
    timestr,
)
from blockd.tools.qemuio.getopt import Opt, OptError, getopt


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0 bytes"),
        (512.0, "512 bytes"),
        (300.5, "300.500000 bytes"),
        (1024.0, "1 KiB"),
        (65536.0, "64 KiB"),
        (1114112.0, "1.062 MiB"),  # qemu-io map: "1.062 MiB (0x110000)"
        (3080192.0, "2.938 MiB"),
        (4194304.0, "4 MiB"),
        (float(1 << 30), "1 GiB"),
        (float(1 << 60), "1 EiB"),
        (float("inf"), "inf EiB"),
    ],
)
def test_cvtstr(value: float, text: str) -> None:
    assert cvtstr(value) == text


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("65536", 65536),
        ("64k", 65536),
        ("64K", 65536),
        ("1M", 1 << 20),
        ("1.5k", 1536),
        ("0x10", 16),
        ("07", 7),
        ("1b", 1),
        ("9223372036854775807", (1 << 63) - 1),
    ],
)
def test_cvtnum_accepts(text: str, value: int) -> None:
    assert cvtnum(text) == value


@pytest.mark.parametrize(
    ("text", "err"),
    [
        ("", -errno.EINVAL),
        ("x", -errno.EINVAL),
        ("-1", -errno.EINVAL),
        ("1.5", -errno.EINVAL),  # a fraction needs a unit
        ("1e3", -errno.EINVAL),
        ("0x", -errno.EINVAL),
        ("0x1k", -errno.EINVAL),
        ("8E", -errno.ERANGE),
        ("9223372036854775808", -errno.ERANGE),
        ("18446744073709551616", -errno.ERANGE),
    ],
)
def test_cvtnum_rejects(text: str, err: int) -> None:
    with pytest.raises(CvtnumError) as ei:
        cvtnum(text)
    assert ei.value.errno == err


def test_cvtnum_error_texts() -> None:
    assert cvtnum_error(-errno.EINVAL, "x") == (
        "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x\n"
    )
    assert cvtnum_error(-errno.ERANGE, "9E") == "Parsing error: argument too large -- 9E\n"


def test_time_and_report_format() -> None:
    assert timestr(0, 4_321_000, False) == "00.00 sec"
    # an exact binary tie rounds to even, as glibc printf does
    assert timestr(0, 125_000_000, False) == "00.12 sec"
    assert timestr(0, 4_321_000, True) == "0:00:00.00"
    assert timestr(3725, 500_000_000, False) == "1:02:05.50"
    out = report("wrote", 1_000_000_000, 0, 1 << 20, 1 << 20, 1, False)
    assert out == (
        "wrote 1048576/1048576 bytes at offset 0\n"
        "1 MiB, 1 ops; 0:00:01.00 (1 MiB/sec and 1.0000 ops/sec)\n"
    )
    assert report("read", 1_000_000_000, 0, 512, 512, 1, True) == (
        "512,1,0:00:01.00,512.000,1.000\n"
    )


def test_dump_buffer() -> None:
    data = b"AAAA" + bytes(range(12)) + b"z!"
    assert dump_buffer(data, 0x20) == (
        "00000020:  41 41 41 41 00 01 02 03 04 05 06 07 08 09 0a 0b  AAAA............\n"
        "00000030:  7a 21  z.\n"
    )


def test_getopt_permutes_and_reports_like_glibc() -> None:
    items, args = getopt(["read", "0", "-v", "512", "-P", "0x41"], "bCl:pP:qs:v")
    assert items == [Opt("v"), Opt("P", "0x41")]
    assert args == ["0", "512"]
    items, args = getopt(["read", "-Z", "0", "1"], "v")
    assert items == [OptError("read: invalid option -- 'Z'\n")]
    items, _ = getopt(["read", "-P"], "P:")
    assert items == [OptError("read: option requires an argument -- 'P'\n")]
    items, args = getopt(["write", "--", "-1", "2"], "P:")
    assert items == [] and args == ["-1", "2"]
