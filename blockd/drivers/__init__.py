"""Block drivers, one per module, registered by QEMU name.

Generic code looks drivers up with ``blockd.drivers.base.driver_class(name)``; the
contract every driver implements is ``blockd.drivers.base.BlockDriver``.
"""
