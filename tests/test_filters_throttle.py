"""Throttling: QEMU's leaky buckets, the throttle-group object, the throttle filter."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from blockd.drivers.base import OpenFlags
from blockd.drivers.open import close_image, open_image
from blockd.drivers.throttle import ThrottleDriver
from blockd.qmp.errors import GenericError
from blockd.qom import ObjectTree
from blockd.qom_throttle import ThrottleGroupObject
from blockd.throttle import BucketType, LeakyBucket, ThrottleConfig, ThrottleGroup
from blockd.throttle.group import lookup_group

MiB = 1 << 20


# --- buckets and validation ------------------------------------------------------


def test_bucket_without_burst_allows_a_tenth_of_a_second() -> None:
    b = LeakyBucket(avg=1000)
    b.level = 100
    assert b.compute_wait_ns() == 0
    b.level = 150
    # 50 units over the 100-unit bucket at 1000/s = 50 ms.
    assert b.compute_wait_ns() == 50_000_000
    b.leak(25_000_000)
    assert b.level == pytest.approx(125)


def test_bucket_with_burst() -> None:
    b = LeakyBucket(avg=100, max=1000, burst_length=2)
    b.level = b.burst_level = 500
    # Main bucket (2000) not full, burst bucket (100) over by 400 at 1000/s.
    assert b.compute_wait_ns() == 400_000_000
    b.leak(100_000_000)
    assert b.level == pytest.approx(490)
    assert b.burst_level == pytest.approx(400)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"iops-total": 10, "iops-read": 5},
         "bps/iops/max total values and read/write values cannot be used at the same time"),
        ({"bps-total-max": 10, "bps-write-max": 5, "bps-total": 1, "bps-write": 0},
         "bps/iops/max total values and read/write values cannot be used at the same time"),
        ({"iops-size": 100}, "iops size requires an iops value to be set"),
        ({"iops-total": -1}, "bps/iops/max values must be within [0, 1000000000000000]"),
        ({"bps-total": 1000000000000001},
         "bps/iops/max values must be within [0, 1000000000000000]"),
        ({"bps-total": 100, "bps-total-max-length": 0}, "the burst length cannot be 0"),
        ({"bps-total": 100, "bps-total-max-length": 5}, "burst length set without burst rate"),
        ({"bps-total": 100, "bps-total-max": 10}, "bps_max/iops_max cannot be lower than bps/iops"),
        ({"bps-read-max": 10}, "bps_max/iops_max require corresponding bps/iops values"),
        ({"bps-total": 1, "bps-total-max": 10**15, "bps-total-max-length": 2},
         "burst length too high for this burst rate"),
        ({"bps-total": 100, "bps-total-max-length": 5000000000},
         "bps-total-max-length value must be in the range [0, 4294967295]"),
    ],
)
def test_limits_validation_texts(limits: dict[str, int], message: str) -> None:
    cfg = ThrottleConfig()
    with pytest.raises(GenericError) as ei:
        cfg.apply_limits(limits)
    assert str(ei.value.desc if hasattr(ei.value, "desc") else ei.value) == message


def test_iops_size_counts_large_requests_as_several_ops() -> None:
    cfg = ThrottleConfig()
    cfg.apply_limits({"iops-total": 10, "iops-size": 4096})
    g = ThrottleGroup("units", cfg)
    g._account(False, 16384)
    assert g.config.bucket(BucketType.OPS_TOTAL).level == pytest.approx(4.0)
    assert g.config.bucket(BucketType.BPS_READ).level == pytest.approx(16384)
    g._account(True, 512)
    assert g.config.bucket(BucketType.OPS_WRITE).level == pytest.approx(1.0)


# --- the QOM object ----------------------------------------------------------------


def _desc(e: GenericError) -> str:
    return str(getattr(e, "desc", e))


def test_throttle_group_object_properties_and_errors() -> None:
    tree = ObjectTree()
    try:
        tree.add_object("throttle-group", "g0", {"limits": {"iops-total": 1000}}, None)
        g0 = tree.resolve("/objects/g0")
        names = [p["name"] for p in g0.list_properties()]
        # QEMU 7.2's qom-list order for throttle-group (measured on QSD).
        assert names[:5] == ["type", "x-bps-write-max-length", "x-iops-total-max-length",
                             "x-iops-size", "limits"]
        assert len(names) == 21
        assert g0.find_property("x-iops-total") == 1000
        assert g0.find_property("x-bps-total-max-length") == 1
        limits = g0.find_property("limits")
        assert list(limits)[:3] == ["iops-total", "iops-total-max", "iops-total-max-length"]
        assert limits["iops-total"] == 1000 and limits["iops-size"] == 0

        # x-* after limits in QDict order: the x- value wins, as on QSD.
        tree.add_object("throttle-group", "g11", {"limits": {"bps-total": 100},
                                                  "x-bps-total": 5}, None)
        assert tree.resolve("/objects/g11").find_property("limits")["bps-total"] == 5

        for props, msg in [
            ({"x-iops-total": -1}, "Property values cannot be negative"),
            ({"x-bps-total-max-length": 5000000000},
             "x-bps-total-max-length value must be in therange [0, 4294967295]"),
            ({"x-iops-total": 10, "x-iops-read": 5},
             "bps/iops/max total values and read/write values cannot be used at the same time"),
        ]:
            with pytest.raises(GenericError) as ei:
                tree.add_object("throttle-group", "bad", props, None)
            assert _desc(ei.value) == msg
            assert lookup_group("bad") is None

        obj = tree.get_object("g0")
        assert isinstance(obj, ThrottleGroupObject)
        with pytest.raises(GenericError) as ei:
            obj.set_property("x-iops-total", 5)
        assert _desc(ei.value) == "Property cannot be set after initialization"
        obj.set_property("limits", {"bps-write": 4096})
        assert obj.get_property("limits")["bps-write"] == 4096
        assert obj.get_property("limits")["iops-total"] == 1000

        member = obj.group.add_member()
        with pytest.raises(GenericError) as ei:
            tree.del_object("g0")
        assert _desc(ei.value) == "object 'g0' is in use, can not be deleted"
        obj.group.remove_member(member)
        tree.del_object("g0")
        assert lookup_group("g0") is None
    finally:
        tree.destroy_all()
    assert lookup_group("g11") is None


# --- the filter ---------------------------------------------------------------------


async def _throttled(img: Path, group: str) -> ThrottleDriver:
    top = await open_image(str(img), "raw", read_only=False)
    drv = ThrottleDriver()
    drv.file = top
    await drv.open({"throttle-group": group}, OpenFlags(read_only=False))
    return drv


async def test_throttle_filter_limits_bandwidth(tmp_path: Path) -> None:
    img = tmp_path / "t.raw"
    img.write_bytes(bytes(2 * MiB))
    cfg = ThrottleConfig()
    cfg.apply_limits({"bps-total": MiB})
    group = ThrottleGroup("bw", cfg)
    group.register()
    try:
        drv = await _throttled(img, "bw")
        # The loop stays responsive while requests wait.
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        start = time.monotonic()
        chunk = bytes([0x5A]) * 65536
        await asyncio.gather(*(drv.write(i * 65536, chunk) for i in range(16)))
        elapsed = time.monotonic() - start
        tick_task.cancel()
        # 1 MiB at 1 MiB/s with a 0.1 s bucket: about 0.84 s.
        assert elapsed >= 0.75
        assert ticks >= 10
        assert await drv.read(0, MiB) == bytes([0x5A]) * MiB
        await drv.close()
        assert not group.in_use()
        await close_image(drv.child())
    finally:
        group.unregister()


async def test_throttle_group_is_fifo_across_members(tmp_path: Path) -> None:
    img = tmp_path / "f.raw"
    img.write_bytes(bytes(MiB))
    cfg = ThrottleConfig()
    cfg.apply_limits({"iops-total": 50})
    group = ThrottleGroup("fifo", cfg)
    group.register()
    try:
        a = await _throttled(img, "fifo")
        b = ThrottleDriver()
        b.file = a.child()
        await b.open({"throttle-group": "fifo"}, OpenFlags(read_only=False))
        assert len(group.members) == 2
        order: list[int] = []

        async def req(drv: ThrottleDriver, i: int) -> None:
            await drv.read(i * 512, 512)
            order.append(i)

        tasks = []
        for i in range(12):
            tasks.append(asyncio.create_task(req(a if i % 2 else b, i)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert order == list(range(12))
        # Group switch on reopen.
        other = ThrottleGroup("other", ThrottleConfig())
        other.register()
        try:
            with pytest.raises(GenericError) as ei:
                await b.reopen_prepare({"throttle-group": "notfound"}, b.flags)
            assert _desc(ei.value) == "Throttle group 'notfound' does not exist"
            await b.reopen_prepare({"throttle-group": "other"}, b.flags)
            await b.reopen_commit()
            assert b.group_name == "other"
            assert len(group.members) == 1 and other.in_use()
            await b.close()
            assert not other.in_use()
        finally:
            other.unregister()
        await a.close()
        await close_image(a.child())
    finally:
        group.unregister()


async def test_throttle_open_errors(tmp_path: Path) -> None:
    img = tmp_path / "e.raw"
    img.write_bytes(bytes(4096))
    top = await open_image(str(img), "raw")
    try:
        drv = ThrottleDriver()
        drv.file = top
        with pytest.raises(GenericError) as ei:
            await drv.open({"throttle-group": "nope"}, OpenFlags())
        assert _desc(ei.value) == "Throttle group 'nope' does not exist"
        with pytest.raises(GenericError) as ei:
            await drv.open({}, OpenFlags())
        assert _desc(ei.value) == "Please specify a throttle group"
    finally:
        await close_image(top)
