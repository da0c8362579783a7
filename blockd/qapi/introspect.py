"""``query-qmp-schema``: QEMU 7.2's introspection format.

Follows ``scripts/qapi/introspect.py``: commands and events in schema order,
then every type they use, in the order first used; type names other than
built-ins are masked as numbers in that order; every integer type shows as
``int``; arrays are named ``[element]``; implicit empty branches point at the
empty object; member defaults are never shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blockd.qapi.types import (
    AlternateType,
    ArrayType,
    BuiltinType,
    CommandDef,
    EnumType,
    Member,
    ObjectType,
    QAPIType,
)

if TYPE_CHECKING:
    from blockd.qapi.schema import Schema


class _Generator:
    def __init__(self, schema: Schema, commands: frozenset[str] | None = None) -> None:
        self.schema = schema
        self.commands = commands
        self.used: list[QAPIType] = []
        self.names: dict[str, str] = {}
        self.trees: list[dict[str, Any]] = []

    def _name(self, name: str) -> str:
        if name not in self.names:
            self.names[name] = str(len(self.names))
        return self.names[name]

    def use(self, typ: QAPIType) -> str:
        # All integer types are plain 'int', arrays of them 'intList'.
        if typ.json_type == "int":
            typ = self._lookup("int")
        elif isinstance(typ, ArrayType) and typ.element_type.json_type == "int":
            typ = self._lookup("intList")
        if typ not in self.used:
            self.used.append(typ)
        if isinstance(typ, BuiltinType):
            return typ.name
        if isinstance(typ, ArrayType):
            return "[" + self.use(typ.element_type) + "]"
        return self._name(typ.name)

    def _lookup(self, name: str) -> QAPIType:
        typ = self.schema.lookup_type(name)
        if typ is None:  # intList exists only if some schema array uses it
            assert name == "intList"
            typ = ArrayType("intList", self._lookup("int"))
        return typ

    def tree(self, name: str, meta: str, obj: dict[str, Any], features: list[str]) -> None:
        entry: dict[str, Any] = {"name": name, "meta-type": meta, **obj}
        if features:
            entry["features"] = list(features)
        self.trees.append(entry)

    def member(self, m: Member) -> dict[str, Any]:
        out: dict[str, Any] = {"name": m.name, "type": self.use(m.type)}
        if m.optional:
            out["default"] = None
        if m.features:
            out["features"] = list(m.features)
        return out

    def visit_type(self, typ: QAPIType) -> None:
        if isinstance(typ, BuiltinType):
            self.tree(typ.name, "builtin", {"json-type": typ.json_type}, [])
        elif isinstance(typ, EnumType):
            members = []
            for m in typ.members:
                em: dict[str, Any] = {"name": m.name}
                if m.features:
                    em["features"] = list(m.features)
                members.append(em)
            self.tree(self._name(typ.name), "enum",
                      {"members": members, "values": typ.values}, typ.features)
        elif isinstance(typ, ArrayType):
            element = self.use(typ.element_type)
            self.tree("[" + element + "]", "array", {"element-type": element}, [])
        elif isinstance(typ, ObjectType):
            obj: dict[str, Any] = {"members": [self.member(m) for m in typ.members]}
            if typ.tag_name is not None:
                obj["tag"] = typ.tag_name
                obj["variants"] = [{"case": v.case, "type": self.use(v.type)}
                                   for v in typ.variants]
            self.tree(self._name(typ.name), "object", obj, typ.features)
        elif isinstance(typ, AlternateType):
            self.tree(self._name(typ.name), "alternate",
                      {"members": [{"type": self.use(a.type)} for a in typ.alternatives]},
                      typ.features)

    def run(self) -> list[dict[str, Any]]:
        empty = self.schema.the_empty_object_type
        for ent in self.schema.entities:
            if isinstance(ent, CommandDef):
                if self.commands is not None and ent.name not in self.commands:
                    continue
                obj: dict[str, Any] = {
                    "arg-type": self.use(ent.arg_type or empty),
                    "ret-type": self.use(ent.ret_type or empty),
                }
                if ent.allow_oob:
                    obj["allow-oob"] = True
                self.tree(ent.name, "command", obj, ent.features)
            else:
                self.tree(ent.name, "event", {"arg-type": self.use(ent.arg_type or empty)},
                          ent.features)
        i = 0
        while i < len(self.used):  # visiting may append more used types
            self.visit_type(self.used[i])
            i += 1
        return self.trees


def generate(
    schema: Schema, commands: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    """The SchemaInfo list for ``schema``, limited to ``commands`` when given
    (so a client never sees a command the daemon would answer CommandNotFound)."""
    return _Generator(schema, commands).run()
