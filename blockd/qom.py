"""A small QOM tree: ``/chardevs``, ``/objects`` and user-creatable objects.

``object-add`` creates an instance of a registered type under ``/objects``
(the container appears with its first child, as in QEMU); ``qom-list`` and
``qom-get`` read it back.  Later issues register more types (throttle-group).
Property listing order is QEMU's for each type, as observed on QSD 7.2.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from blockd.qapi.ghash import GHashKeys, ghash_order
from blockd.qmp.errors import DeviceNotFound, GenericError

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")


class QObject:
    """A node of the QOM composition tree.

    Properties live where QEMU keeps them: children (and other per-instance
    properties) in the instance's hash table, the rest in each class's table
    (``class_properties``: the class's own, in registration order).  qom-list
    walks instance then classes from the most derived up, prepending, so the
    listing order is QEMU's GHashTable order, reversed.
    """

    type_name: ClassVar[str] = "object"
    class_properties: ClassVar[dict[str, str]] = {"type": "string"}

    def __init__(self) -> None:
        self.children: dict[str, QObject] = {}
        self._instance_props = GHashKeys()
        self.parent: QObject | None = None
        self.name = ""

    def get_property(self, name: str) -> Any:
        """Value of a class property (``type`` here; subclasses add theirs)."""
        if name == "type":
            return self.type_name
        raise KeyError(name)

    def add_child(self, name: str, child: QObject) -> None:
        if name in self.children:
            raise GenericError(
                f"attempt to add duplicate property '{name}' to object (type '{self.type_name}')"
            )
        child.parent = self
        child.name = name
        self.children[name] = child
        self._instance_props.insert(name)

    def remove_child(self, name: str) -> None:
        child = self.children.pop(name)
        child.parent = None
        self._instance_props.remove(name)

    def _class_property_types(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for cls in type(self).__mro__:
            own = cls.__dict__.get("class_properties")
            if own:
                out += [(n, own[n]) for n in ghash_order(list(own))]
        return out

    def list_properties(self) -> list[dict[str, str]]:
        walk = [(n, f"child<{self.children[n].type_name}>")
                for n in self._instance_props.ordered()]
        walk += self._class_property_types()
        return [{"name": n, "type": t} for n, t in reversed(walk)]

    def find_property(self, name: str) -> Any:
        """qom-get: a class property's value (children are links, not values)."""
        if any(n == name for n, _ in self._class_property_types()):
            return self.get_property(name)
        raise GenericError(f"Property '{self.type_name}.{name}' not found")


class Container(QObject):
    type_name = "container"


class UserCreatable(QObject):
    """Base of the types ``object-add`` can create; subclasses register themselves."""

    types: ClassVar[dict[str, type[UserCreatable]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type_name" in cls.__dict__:
            UserCreatable.types[cls.type_name] = cls

    def __init__(self, obj_id: str, props: dict[str, Any], daemon: Any) -> None:
        super().__init__()
        self.id = obj_id
        self.daemon = daemon

    def in_use(self) -> bool:
        """True while something refers to the object (object-del then refuses)."""
        return False

    def destroy(self) -> None:
        """Release resources when the object is deleted or the daemon exits."""


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise GenericError(f"{name} value must be in range [{lo}, {hi}]")


class EventLoopBase(UserCreatable):
    """QEMU's event-loop-base: the thread-pool and batching knobs."""

    class_properties: ClassVar[dict[str, str]] = {
        "aio-max-batch": "int", "thread-pool-min": "int", "thread-pool-max": "int",
    }
    _INT64_MAX = 2**63 - 1
    _DEFAULTS: ClassVar[dict[str, int]] = {
        "aio-max-batch": 0, "thread-pool-min": 0, "thread-pool-max": 64,
    }

    def __init__(self, obj_id: str, props: dict[str, Any], daemon: Any) -> None:
        super().__init__(obj_id, props, daemon)
        self.values: dict[str, int] = {}
        for cls in reversed(type(self).__mro__):
            self.values.update(cls.__dict__.get("_DEFAULTS", {}))
        for knob in self.values:
            if knob in props:
                _check_range(knob, props[knob], 0, self._INT64_MAX)
                self.values[knob] = props[knob]

    def get_property(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        return super().get_property(name)


class IOThread(EventLoopBase):
    """``iothread``: blockd runs all I/O in one event loop plus a thread pool,
    so an iothread records its tuning knobs and names an AioContext."""

    type_name = "iothread"
    class_properties: ClassVar[dict[str, str]] = {
        "poll-max-ns": "int", "poll-grow": "int", "poll-shrink": "int",
    }
    _DEFAULTS: ClassVar[dict[str, int]] = {"poll-max-ns": 32768, "poll-grow": 0,
                                           "poll-shrink": 0}


class ObjectTree:
    """The QOM root with its containers; resolves absolute and partial paths."""

    def __init__(self) -> None:
        self.root = Container()
        self.chardevs = Container()
        self.root.add_child("chardevs", self.chardevs)

    def objects(self) -> Container | None:
        obj = self.root.children.get("objects")
        return obj if isinstance(obj, Container) else None

    def resolve(self, path: str) -> QObject:
        """QEMU's object_resolve_path: absolute, or a unique partial match."""
        if path.startswith("/"):
            obj: QObject | None = self.root
            for part in (p for p in path.split("/") if p):
                obj = obj.children.get(part) if obj is not None else None
            if obj is None:
                raise DeviceNotFound(f"Device '{path}' not found")
            return obj
        parts = [p for p in path.split("/") if p]
        matches = [o for o in self._walk(self.root) if self._ends_with(o, parts)]
        if len(matches) > 1:
            raise GenericError(f"Path '{path}' is ambiguous")
        if not matches:
            raise DeviceNotFound(f"Device '{path}' not found")
        return matches[0]

    @staticmethod
    def _ends_with(obj: QObject, parts: list[str]) -> bool:
        cur: QObject | None = obj
        for part in reversed(parts):
            if cur is None or cur.name != part:
                return False
            cur = cur.parent
        return True

    def _walk(self, obj: QObject) -> list[QObject]:
        out = [obj]
        for child in obj.children.values():
            out += self._walk(child)
        return out

    def add_object(self, qom_type: str, obj_id: str, props: dict[str, Any], daemon: Any) -> None:
        if not _ID_RE.match(obj_id):
            raise GenericError("Parameter 'id' expects an identifier")
        cls = UserCreatable.types.get(qom_type)
        if cls is None:
            raise GenericError(f"invalid object type: {qom_type}")
        container = self.objects() or Container()
        if obj_id in container.children:
            raise GenericError(
                f"attempt to add duplicate property '{obj_id}' to object (type 'container')"
            )
        obj = cls(obj_id, props, daemon)
        if self.objects() is None:
            self.root.add_child("objects", container)
        container.add_child(obj_id, obj)

    def get_object(self, obj_id: str) -> UserCreatable | None:
        container = self.objects()
        obj = container.children.get(obj_id) if container else None
        return obj if isinstance(obj, UserCreatable) else None

    def del_object(self, obj_id: str) -> None:
        obj = self.get_object(obj_id)
        if obj is None:
            raise GenericError(f"object '{obj_id}' not found")
        if obj.in_use():
            raise GenericError(f"object '{obj_id}' is in use, can not be deleted")
        container = self.objects()
        assert container is not None
        container.remove_child(obj_id)
        obj.destroy()

    def destroy_all(self) -> None:
        container = self.objects()
        if container is None:
            return
        for obj in list(container.children.values()):
            if isinstance(obj, UserCreatable):
                obj.destroy()
