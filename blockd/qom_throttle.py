"""The ``throttle-group`` user-creatable object (QEMU's block/throttle-groups.c).

``object-add qom-type=throttle-group`` creates a named :class:`ThrottleGroup`
that throttle filter nodes join by name.  Properties are QEMU 7.2's
ThrottleGroupProperties: ``limits`` (a ThrottleLimits, settable at any time as
one transaction) and the legacy ``x-*`` members (only before the object is
complete).  The object is "in use" while a filter node belongs to the group.
"""

from __future__ import annotations

from typing import Any, ClassVar

from blockd.qmp.errors import GenericError
from blockd.qmp.qdict import qdict_order
from blockd.qom import UserCreatable
from blockd.throttle.config import LIMIT_FIELDS, UINT_MAX
from blockd.throttle.group import ThrottleGroup

_X_PROPS: dict[str, str] = {f"x-{name}": "int" for name in LIMIT_FIELDS}


class ThrottleGroupObject(UserCreatable):
    """QOM face of a throttle group."""

    type_name = "throttle-group"
    # Registration order of throttle_group_obj_class_init: the x-* table, then limits.
    class_properties: ClassVar[dict[str, str]] = {**_X_PROPS, "limits": "ThrottleLimits"}

    def __init__(self, obj_id: str, props: dict[str, Any], daemon: Any) -> None:
        super().__init__(obj_id, props, daemon)
        self.group = ThrottleGroup(obj_id)
        self.initialized = False
        # object_set_properties_from_qdict walks the QDict in hash order.
        for key in qdict_order(props):
            self.set_property(key, props[key])
        # throttle_group_obj_complete: validate, then publish the name.
        self.group.config.validate()
        self.group.register()
        self.initialized = True

    def set_property(self, name: str, value: Any) -> None:
        """qom-set / object-add property setter with QEMU's checks and texts."""
        if name == "limits":
            cfg = self.group.config.copy()
            cfg.apply_limits(dict(value))
            if self.initialized:
                self.group.set_config(cfg)
            else:
                self.group.config = cfg
            return
        if name not in _X_PROPS:
            raise GenericError(f"Property '{self.type_name}.{name}' not found")
        if self.initialized:
            raise GenericError("Property cannot be set after initialization")
        value = int(value)
        if value < 0:
            raise GenericError("Property values cannot be negative")
        kind, bkt = LIMIT_FIELDS[name[2:]]
        if kind == "length" and value > UINT_MAX:
            # QEMU's text really lacks the space ("therange").
            raise GenericError(f"{name} value must be in therange [0, {UINT_MAX}]")
        self.group.config.set_field(kind, bkt, value)

    def get_property(self, name: str) -> Any:
        if name == "limits":
            return self.group.config.to_limits()
        if name in _X_PROPS:
            kind, bkt = LIMIT_FIELDS[name[2:]]
            return self.group.config.get_field(kind, bkt)
        return super().get_property(name)

    def in_use(self) -> bool:
        return self.group.in_use()

    def destroy(self) -> None:
        self.group.unregister()
