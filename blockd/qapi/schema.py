"""The loaded QMP schema and blockd's API to it.

``Schema`` resolves the definitions read by :mod:`blockd.qapi.parser` into the
type model of :mod:`blockd.qapi.types`, and is the one object the QMP
dispatcher asks: which commands exist, are these arguments valid (with QEMU's
exact error texts), what are the defaults, and what does ``query-qmp-schema``
return.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from blockd.qapi import introspect, visitor
from blockd.qapi.parser import Definition, QAPISchemaError, parse_schema
from blockd.qapi.types import (
    BUILTIN_JSON_TYPES,
    NO_DEFAULT,
    AlternateType,
    ArrayType,
    BuiltinType,
    CommandDef,
    EnumMember,
    EnumType,
    EventDef,
    Member,
    ObjectType,
    QAPIType,
    Variant,
)


def _schema_dir() -> Path:
    """The installed data package ``blockd.schema``, else the checkout's schema/."""
    import blockd

    pkg = Path(blockd.__file__).parent
    installed = pkg / "schema"
    if (installed / "schema.json").is_file():
        return installed
    return pkg.parent / "schema"


def _feature_names(raw: Any, where: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise QAPISchemaError(f"{where}: 'features' must be an array")
    out: list[str] = []
    for f in raw:
        out.append(f["name"] if isinstance(f, dict) else f)
    return out


class Schema:
    """A parsed, resolved QAPI schema."""

    def __init__(self, main_file: Path) -> None:
        self.main_file = main_file
        self._types: dict[str, QAPIType] = {}
        self._commands: dict[str, CommandDef] = {}
        self._events: dict[str, EventDef] = {}
        # Commands and events in definition order (module order first).
        self.entities: list[CommandDef | EventDef] = []
        self._introspection: list[dict[str, Any]] | None = None
        self._introspection_for: dict[frozenset[str], list[dict[str, Any]]] = {}
        for name in BUILTIN_JSON_TYPES:
            self._types[name] = BuiltinType(name)
        self.the_empty_object_type = ObjectType("q_empty", implicit=True)
        self._types["q_empty"] = self.the_empty_object_type
        self._load(parse_schema(main_file))

    # ------------------------------------------------------------------ loading

    @classmethod
    @functools.cache
    def load_default(cls) -> Schema:
        """The schema shipped with blockd (parsed once per process)."""
        return cls(_schema_dir() / "schema.json")

    def _load(self, modules: list[Any]) -> None:
        defs: list[Definition] = [d for m in modules for d in m.definitions]
        # Pass 1: create every named type so references may point forward.
        for d in defs:
            e = d.expr
            if "enum" in e:
                self._add_type(EnumType(e["enum"], prefix=e.get("prefix")), d)
            elif "struct" in e:
                self._add_type(ObjectType(e["struct"]), d)
            elif "union" in e:
                self._add_type(ObjectType(e["union"]), d)
            elif "alternate" in e:
                self._add_type(AlternateType(e["alternate"]), d)
        # Pass 2: fill them in: enums first, then structs and alternates, then
        # unions (whose discriminator checks need both); commands and events.
        for kinds in (("enum",), ("struct", "alternate"), ("union",), ("command", "event")):
            for d in defs:
                e = d.expr
                where = f"{d.fname}:{d.line}"
                kind = next((k for k in kinds if k in e), None)
                if kind is None:
                    continue
                getattr(self, "_fill_" + kind)(e, where)
        for d in defs:
            if not any(k in d.expr for k in ("enum", "struct", "alternate", "union",
                                              "command", "event", "pragma")):
                raise QAPISchemaError(f"{d.fname}:{d.line}: unknown expression kind")
        for typ in self._types.values():
            if isinstance(typ, ObjectType):
                typ.freeze()

    def _add_type(self, typ: QAPIType, d: Definition) -> None:
        if typ.name in self._types:
            raise QAPISchemaError(f"{d.fname}:{d.line}: '{typ.name}' is already defined")
        self._types[typ.name] = typ

    def _resolve(self, ref: Any, where: str) -> QAPIType:
        if isinstance(ref, list):
            if len(ref) != 1 or not isinstance(ref[0], str):
                raise QAPISchemaError(f"{where}: array type must name exactly one element type")
            return self._array_of(self._resolve(ref[0], where))
        if not isinstance(ref, str):
            raise QAPISchemaError(f"{where}: type reference must be a string or array")
        typ = self._types.get(ref)
        if typ is None:
            raise QAPISchemaError(f"{where}: uses unknown type '{ref}'")
        return typ

    def _array_of(self, element: QAPIType) -> ArrayType:
        name = element.name + "List"
        typ = self._types.get(name)
        if typ is None:
            typ = ArrayType(name, element)
            self._types[name] = typ
        assert isinstance(typ, ArrayType)
        return typ

    def _members(self, data: Any, where: str) -> list[Member]:
        if not isinstance(data, dict):
            raise QAPISchemaError(f"{where}: 'data' must be an object")
        out: list[Member] = []
        for key, spec in data.items():
            optional = key.startswith("*")
            name = key[1:] if optional else key
            features: list[str] = []
            default: Any = NO_DEFAULT
            if isinstance(spec, dict):
                features = _feature_names(spec.get("features"), where)
                if "default" in spec:
                    if not optional:
                        raise QAPISchemaError(f"{where}: mandatory '{name}' cannot have a default")
                    default = spec["default"]
                spec = spec["type"]
            out.append(Member(name, self._resolve(spec, where), optional, features, default))
        return out

    def _implicit_object(self, name: str, members: list[Member]) -> ObjectType | None:
        if not members:
            return None
        obj = ObjectType(name, local_members=members, implicit=True)
        self._types[name] = obj
        return obj

    def _object(self, name: str) -> ObjectType:
        typ = self._types[name]
        assert isinstance(typ, ObjectType)
        return typ

    def _fill_enum(self, e: dict[str, Any], where: str) -> None:
        typ = self._types[e["enum"]]
        assert isinstance(typ, EnumType)
        for v in e["data"]:
            if isinstance(v, dict):
                typ.members.append(EnumMember(v["name"], _feature_names(v.get("features"), where)))
            else:
                typ.members.append(EnumMember(v))
        typ.features = _feature_names(e.get("features"), where)

    def _fill_struct(self, e: dict[str, Any], where: str) -> None:
        obj = self._object(e["struct"])
        if "base" in e:
            base = self._resolve(e["base"], where)
            if not isinstance(base, ObjectType) or base.is_union:
                raise QAPISchemaError(f"{where}: base must be a struct")
            obj.base = base
        obj.local_members = self._members(e.get("data", {}), where)
        obj.features = _feature_names(e.get("features"), where)

    def _fill_union(self, e: dict[str, Any], where: str) -> None:
        obj = self._object(e["union"])
        base_spec = e.get("base")
        if isinstance(base_spec, dict):
            base = self._implicit_object(f"q_obj_{obj.name}-base", self._members(base_spec, where))
        else:
            resolved = self._resolve(base_spec, where)
            if not isinstance(resolved, ObjectType):
                raise QAPISchemaError(f"{where}: union base must be an object")
            base = resolved
        if base is None:
            raise QAPISchemaError(f"{where}: union needs a base")
        obj.base = base
        obj.features = _feature_names(e.get("features"), where)
        tag = e["discriminator"]
        tag_member = obj.member(tag)
        if tag_member is None or tag_member.optional or not isinstance(tag_member.type, EnumType):
            raise QAPISchemaError(f"{where}: discriminator '{tag}' must be a mandatory enum member")
        obj.tag_name = tag
        for case, spec in e["data"].items():
            if isinstance(spec, dict):
                spec = spec["type"]
            branch = self._resolve(spec, where)
            if not isinstance(branch, ObjectType) or case not in tag_member.type.values:
                raise QAPISchemaError(f"{where}: bad branch '{case}'")
            obj.variants.append(Variant(case, branch))
        # Enum values without a branch get the empty object, appended in enum
        # order, as QEMU's QAPISchemaVariants.check() does.
        listed = {v.case for v in obj.variants}
        for value in tag_member.type.values:
            if value not in listed:
                obj.variants.append(Variant(value, self.the_empty_object_type))

    def _fill_alternate(self, e: dict[str, Any], where: str) -> None:
        typ = self._types[e["alternate"]]
        assert isinstance(typ, AlternateType)
        typ.alternatives = self._members(e["data"], where)
        typ.features = _feature_names(e.get("features"), where)

    def _args(self, owner: str, data: Any, boxed: bool, where: str) -> ObjectType | None:
        if data is None:
            return None
        if isinstance(data, dict):
            if boxed:
                raise QAPISchemaError(f"{where}: 'boxed' needs a named type")
            return self._implicit_object(f"q_obj_{owner}-arg", self._members(data, where))
        typ = self._resolve(data, where)
        if not isinstance(typ, ObjectType):
            raise QAPISchemaError(f"{where}: 'data' must name an object type")
        return typ

    def _fill_command(self, e: dict[str, Any], where: str) -> None:
        name = e["command"]
        boxed = bool(e.get("boxed", False))
        returns = e.get("returns")
        cmd = CommandDef(
            name=name,
            arg_type=self._args(name, e.get("data"), boxed, where),
            ret_type=None if returns is None else self._resolve(returns, where),
            boxed=boxed,
            allow_oob=bool(e.get("allow-oob", False)),
            allow_preconfig=bool(e.get("allow-preconfig", False)),
            coroutine=bool(e.get("coroutine", False)),
            success_response=bool(e.get("success-response", True)),
            features=_feature_names(e.get("features"), where),
            gen=bool(e.get("gen", True)),
        )
        if name in self._commands:
            raise QAPISchemaError(f"{where}: command '{name}' is already defined")
        self._commands[name] = cmd
        self.entities.append(cmd)

    def _fill_event(self, e: dict[str, Any], where: str) -> None:
        name = e["event"]
        boxed = bool(e.get("boxed", False))
        ev = EventDef(name, self._args(name, e.get("data"), boxed, where), boxed,
                      _feature_names(e.get("features"), where))
        self._events[name] = ev
        self.entities.append(ev)

    # ------------------------------------------------------------------ queries

    def lookup_type(self, name: str) -> QAPIType | None:
        """A type by its schema name (arrays as ``<Element>List``)."""
        return self._types.get(name)

    def command(self, name: str) -> CommandDef | None:
        return self._commands.get(name)

    def command_names(self) -> list[str]:
        """Every command, in schema order (query-commands lists them reversed)."""
        return [e.name for e in self.entities if isinstance(e, CommandDef)]

    def query_commands(self) -> list[dict[str, str]]:
        """The ``query-commands`` result: QEMU lists the newest registration first."""
        return [{"name": n} for n in reversed(self.command_names())]

    def event(self, name: str) -> EventDef | None:
        return self._events.get(name)

    def event_names(self) -> list[str]:
        return [e.name for e in self.entities if isinstance(e, EventDef)]

    def _type_or_error(self, type_name: str) -> QAPIType:
        typ = self._types.get(type_name)
        if typ is None:
            raise KeyError(f"no QAPI type '{type_name}'")
        return typ

    # ------------------------------------------------------------------ visiting

    def visit_command_args(self, name: str, args: dict[str, Any] | None) -> dict[str, Any]:
        """Check a command's arguments the way QEMU's generated marshaller does.

        Raises ``GenericError`` with QEMU's text; returns a deep copy of the
        arguments.  ``x-blockdev-reopen`` is checked with QEMU 6.0 wording.
        Unknown commands raise ``CommandNotFound``.
        """
        from blockd.qmp.errors import CommandNotFound

        cmd = self._commands.get(name)
        if cmd is None:
            raise CommandNotFound(f"The command {name} has not been found")
        compat = "6.0" if name == "x-blockdev-reopen" else "7.2"
        return visitor.visit_command_args(cmd, args, compat=compat)

    def visit(self, type_name: str, value: Any, name: str | None = None, *,
              compat: str = "7.2") -> Any:
        """Check ``value`` against a type as QMP input; returns a deep copy."""
        return visitor.visit_value(self._type_or_error(type_name), value, name,
                                   keyval=False, compat=compat)

    def visit_keyval(self, type_name: str, value: dict[str, Any]) -> Any:
        """Check command-line (keyval) input where every scalar is a string.

        Returns the value with scalars converted to their schema types.
        """
        return visitor.visit_value(self._type_or_error(type_name), value, None,
                                   keyval=True, compat="7.2")

    def defaults(self, type_name: str, branch: str | None = None) -> dict[str, Any]:
        """Documented defaults of an object type's members (and a union branch's)."""
        typ = self._type_or_error(type_name)
        if not isinstance(typ, ObjectType):
            raise KeyError(f"'{type_name}' is not an object type")
        members = list(typ.members)
        if branch is not None:
            variant = typ.variant(branch)
            if variant is None:
                raise KeyError(f"'{type_name}' has no branch '{branch}'")
            members += variant.members
        return {m.name: m.default for m in members if m.default is not NO_DEFAULT}

    def command_defaults(self, name: str) -> dict[str, Any]:
        """Defaults of a command's arguments (empty when it has none)."""
        cmd = self._commands[name]
        if cmd.arg_type is None:
            return {}
        return {m.name: m.default for m in cmd.arg_type.members if m.default is not NO_DEFAULT}

    def introspect(self, commands: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """The ``query-qmp-schema`` result (computed once per command set);
        ``commands`` limits it to the commands actually implemented."""
        if commands is None:
            if self._introspection is None:
                self._introspection = introspect.generate(self)
            return self._introspection
        cached = self._introspection_for.get(commands)
        if cached is None:
            cached = introspect.generate(self, commands)
            self._introspection_for[commands] = cached
        return cached
