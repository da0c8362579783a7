"""The QAPI type model: what a parsed schema knows about each type.

The classes mirror QEMU's ``scripts/qapi/schema.py`` closely enough that the
input visitor and the introspection generator can follow the generated C code's
behaviour (member order, flat unions with their base first, implicit empty
branches, alternates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Final = _NoDefault()

# Built-in types: name -> (JSON type for introspection, C integer range or None).
INT_RANGES: Final[dict[str, tuple[int, int, str]]] = {
    "int8": (-(2**7), 2**7 - 1, "int8_t"),
    "int16": (-(2**15), 2**15 - 1, "int16_t"),
    "int32": (-(2**31), 2**31 - 1, "int32_t"),
    "uint8": (0, 2**8 - 1, "uint8_t"),
    "uint16": (0, 2**16 - 1, "uint16_t"),
    "uint32": (0, 2**32 - 1, "uint32_t"),
}

BUILTIN_JSON_TYPES: Final[dict[str, str]] = {
    "str": "string",
    "number": "number",
    "int": "int",
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "int",
    "uint8": "int",
    "uint16": "int",
    "uint32": "int",
    "uint64": "int",
    "size": "int",
    "bool": "boolean",
    "null": "null",
    "any": "value",
    "QType": "string",
}


@dataclass(eq=False)
class QAPIType:
    name: str

    @property
    def json_type(self) -> str:
        raise NotImplementedError


@dataclass(eq=False)
class BuiltinType(QAPIType):
    @property
    def json_type(self) -> str:
        return BUILTIN_JSON_TYPES[self.name]


@dataclass(eq=False)
class EnumMember:
    name: str
    features: list[str] = field(default_factory=list)


@dataclass(eq=False)
class EnumType(QAPIType):
    members: list[EnumMember] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    prefix: str | None = None

    @property
    def json_type(self) -> str:
        return "string"

    @property
    def values(self) -> list[str]:
        return [m.name for m in self.members]


@dataclass(eq=False)
class ArrayType(QAPIType):
    element_type: QAPIType = field(default=None)  # type: ignore[assignment]

    @property
    def json_type(self) -> str:
        return "array"


@dataclass(eq=False)
class Member:
    """A struct/union member.  ``default`` is a blockd extension."""

    name: str
    type: QAPIType
    optional: bool = False
    features: list[str] = field(default_factory=list)
    default: Any = NO_DEFAULT


@dataclass(eq=False)
class Variant:
    case: str
    type: ObjectType


@dataclass(eq=False)
class ObjectType(QAPIType):
    """Struct, flat union, or implicit argument/base type.

    ``members`` is the flattened list (base members first), as the generated
    visitor and introspection see it.
    """

    base: ObjectType | None = None
    local_members: list[Member] = field(default_factory=list)
    tag_name: str | None = None
    variants: list[Variant] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    implicit: bool = False
    _frozen_members: list[Member] | None = field(default=None, repr=False)
    _variant_map: dict[str, ObjectType] | None = field(default=None, repr=False)

    @property
    def json_type(self) -> str:
        return "object"

    @property
    def members(self) -> list[Member]:
        if self._frozen_members is not None:
            return self._frozen_members
        base = self.base.members if self.base is not None else []
        return [*base, *self.local_members]

    def freeze(self) -> None:
        """Cache the flattened members and branches once the schema is loaded."""
        self._frozen_members = self.members
        self._variant_map = {v.case: v.type for v in self.variants}

    @property
    def is_union(self) -> bool:
        return self.tag_name is not None

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def variant(self, case: str) -> ObjectType | None:
        if self._variant_map is not None:
            return self._variant_map.get(case)
        for v in self.variants:
            if v.case == case:
                return v.type
        return None


@dataclass(eq=False)
class AlternateType(QAPIType):
    alternatives: list[Member] = field(default_factory=list)
    features: list[str] = field(default_factory=list)

    @property
    def json_type(self) -> str:
        return "value"


@dataclass(eq=False)
class CommandDef:
    """A QMP command as declared in the schema."""

    name: str
    arg_type: ObjectType | None
    ret_type: QAPIType | None
    boxed: bool = False
    allow_oob: bool = False
    allow_preconfig: bool = False
    coroutine: bool = False
    success_response: bool = True
    features: list[str] = field(default_factory=list)
    gen: bool = True


@dataclass(eq=False)
class EventDef:
    name: str
    arg_type: ObjectType | None
    boxed: bool = False
    features: list[str] = field(default_factory=list)
