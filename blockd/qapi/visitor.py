"""Input validation with QEMU 7.2's semantics and error texts.

This replays what QEMU's generated ``visit_type_*`` functions do on top of
``qapi/qobject-input-visitor.c``: members are visited in schema order (base
first, so a flat union's discriminator comes first), optional members count as
present whenever the key exists (even as JSON null), and unexpected keys are
only reported after all members were visited.  Error paths are built the way
``full_name()`` builds them (``a.b[0].c``; ``a.b.0.c`` for keyval input), and
the few messages that use the bare member name (enum values, integer ranges,
alternates) do so too.

Two modes: QMP input (JSON values) and keyval input (command-line options,
where every scalar is a string and is converted here).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from blockd.qapi.ghash import unvisited_keys
from blockd.qapi.types import (
    INT_RANGES,
    AlternateType,
    ArrayType,
    BuiltinType,
    CommandDef,
    EnumType,
    ObjectType,
    QAPIType,
)
from blockd.qmp.errors import GenericError


class _Missing:
    pass


_MISSING: Final = _Missing()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1


@dataclass
class _Frame:
    """One open container: QEMU's StackObject."""

    name: str | None
    obj: dict[str, Any] | list[Any]
    consumed: list[str] | None = None  # keys of a dict visited so far, in order
    index: int = -1  # index of the list element last taken
    pos: int = 0  # next list element


def _qtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    raise TypeError(f"not a JSON value: {value!r}")


def _qtype_of_type(typ: QAPIType) -> str:
    """Which JSON value kind selects this alternative of an alternate."""
    if isinstance(typ, ObjectType):
        return "dict"
    if isinstance(typ, ArrayType):
        return "list"
    if isinstance(typ, EnumType):
        return "str"
    json_type = typ.json_type
    return {"string": "str", "int": "num", "number": "num", "boolean": "bool",
            "null": "null"}.get(json_type, "any")


# qapi_bool_parse()
_TRUE_WORDS = ("on", "yes", "true", "y")
_FALSE_WORDS = ("off", "no", "false", "n")
_STRTOL_RE = re.compile(r"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")
_SIZE_SUFFIXES = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
                  "p": 2**50, "e": 2**60}
_SIZE_RE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?|\.[0-9]+)([bBkKmMgGtTpPeE]?)\Z")


def _strtol(text: str) -> int | None:
    """strtoll/strtoull with base 0, rejecting trailing garbage."""
    if not _STRTOL_RE.match(text):
        return None
    t = text.strip()
    sign = -1 if t.startswith("-") else 1
    t = t.lstrip("+-")
    if t[:2] in ("0x", "0X"):
        return sign * int(t[2:], 16)
    if len(t) > 1 and t[0] == "0":
        return sign * int(t, 8)
    return sign * int(t)


def _strtod(text: str) -> float | None:
    """qemu_strtod_finite(): the whole string, finite."""
    t = text.lstrip(" \t\n\v\f\r")
    if not t or "_" in t or t != t.rstrip():
        return None
    try:
        num = float(t)
    except ValueError:
        if not t.lstrip("+-").lower().startswith("0x"):
            return None
        try:
            num = float.fromhex(t)
        except ValueError:
            return None
    return num if math.isfinite(num) else None


def _strtosz(text: str) -> int | None:
    """qemu_strtosz(): a byte count with an optional binary suffix."""
    m = _SIZE_RE.match(text)
    if not m:
        return None
    num, suffix = m.group(1), m.group(2).lower()
    mult = _SIZE_SUFFIXES[suffix]
    if num[:2] in ("0x", "0X"):
        if suffix in ("b", "e"):  # would be a hex digit
            return None
        val = int(num, 16) * mult
    elif "." in num:
        if mult == 1 and float(num) != int(float(num)):
            return None
        val = int(float(num) * mult)
    else:
        val = int(num) * mult
    return val if val <= _UINT64_MAX else None


class InputVisitor:
    """One visit of one input value (QEMU's QObjectInputVisitor)."""

    def __init__(self, root: Any, *, keyval: bool = False, compat: str = "7.2") -> None:
        self.root = root
        self.keyval = keyval
        self.compat = compat
        self.stack: list[_Frame] = []

    # -- naming -------------------------------------------------------------

    def full_name(self, name: str | None, n: int = 0) -> str:
        errname = ""
        for frame in reversed(self.stack):
            if n:
                n -= 1
            elif isinstance(frame.obj, dict):
                errname = "." + (name if name is not None else "<anonymous>") + errname
            else:
                errname = (f".{frame.index}" if self.keyval else f"[{frame.index}]") + errname
            name = frame.name
        if name:
            return name + errname
        if errname.startswith("."):
            return errname[1:]
        return errname or "<anonymous>"

    def _type_error(self, name: str | None, expected: str) -> GenericError:
        return GenericError(
            f"Invalid parameter type for '{self.full_name(name)}', expected: {expected}")

    def _value_error(self, name: str | None, expected: str) -> GenericError:
        return GenericError(f"Parameter '{self.full_name(name)}' expects {expected}")

    # -- element access -----------------------------------------------------

    def _try_get(self, name: str | None, consume: bool) -> Any:
        if not self.stack:
            return self.root
        top = self.stack[-1]
        if isinstance(top.obj, dict):
            assert name is not None
            value = top.obj.get(name, _MISSING)
            if consume and value is not _MISSING and top.consumed is not None:
                top.consumed.append(name)
            return value
        value = top.obj[top.pos] if top.pos < len(top.obj) else _MISSING
        if consume:
            if value is not _MISSING:
                top.pos += 1
            top.index += 1
        return value

    def _get(self, name: str | None, consume: bool = True) -> Any:
        value = self._try_get(name, consume)
        if value is _MISSING:
            raise GenericError(f"Parameter '{self.full_name(name)}' is missing")
        return value

    def _get_keyval_str(self, name: str | None) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            if isinstance(value, (dict, list)):
                raise GenericError(f"Parameters '{self.full_name(name)}.*' are unexpected")
            raise self._type_error(name, "string")
        return value

    # -- entry points ---------------------------------------------------------

    def visit(self, typ: QAPIType, name: str | None) -> Any:
        if isinstance(typ, ObjectType):
            return self.visit_struct(typ, name)
        if isinstance(typ, ArrayType):
            return self.visit_list(typ, name)
        if isinstance(typ, AlternateType):
            return self.visit_alternate(typ, name)
        if isinstance(typ, EnumType):
            return self.visit_enum(typ, name)
        assert isinstance(typ, BuiltinType)
        return self.visit_builtin(typ.name, name)

    def start_struct(self, name: str | None) -> dict[str, Any]:
        value = self._get(name)
        if not isinstance(value, dict):
            raise self._type_error(name, "object")
        self.stack.append(_Frame(name, value, consumed=[]))
        return value

    def check_struct(self) -> None:
        top = self.stack[-1]
        assert isinstance(top.obj, dict) and top.consumed is not None
        if len(top.consumed) == len(top.obj):
            return
        # Name the key QEMU's hash table of unvisited keys yields first.
        table = unvisited_keys(list(top.obj))
        for key in top.consumed:
            table.remove(key)
        first = table.first()
        assert first is not None
        raise GenericError(f"Parameter '{self.full_name(first)}' is unexpected")

    def end_struct(self) -> None:
        self.stack.pop()

    def visit_struct(self, typ: ObjectType, name: str | None) -> dict[str, Any]:
        self.start_struct(name)
        out = self.visit_members(typ)
        self.check_struct()
        self.end_struct()
        return out

    def visit_members(self, typ: ObjectType, out: dict[str, Any] | None = None) -> dict[str, Any]:
        """visit_type_T_members(): all members in order, then the branch."""
        if out is None:
            out = {}
        for m in typ.members:
            if m.optional and self._try_get(m.name, False) is _MISSING:
                continue
            out[m.name] = self.visit(m.type, m.name)
        if typ.tag_name is not None:
            branch = typ.variant(out[typ.tag_name])
            assert branch is not None
            self.visit_members(branch, out)
        return out

    def visit_list(self, typ: ArrayType, name: str | None) -> list[Any]:
        value = self._get(name)
        if not isinstance(value, list):
            raise self._type_error(name, "array")
        self.stack.append(_Frame(name, value))
        out = [self.visit(typ.element_type, None) for _ in value]
        self.stack.pop()
        return out

    def visit_alternate(self, typ: AlternateType, name: str | None) -> Any:
        value = self._get(name, consume=False)
        kind = _qtype(value)
        for alt in typ.alternatives:
            if _qtype_of_type(alt.type) == kind:
                return self.visit(alt.type, name)
        raise GenericError(
            f"Invalid parameter type for '{name if name is not None else 'null'}', "
            f"expected: {typ.name}")

    def visit_enum(self, typ: EnumType, name: str | None) -> str:
        value = self.visit_builtin("str", name)
        if value not in typ.values:
            if self.compat == "6.0":
                raise GenericError(f"Invalid parameter '{value}'")
            raise GenericError(
                f"Parameter '{name if name is not None else 'null'}' "
                f"does not accept value '{value}'")
        return str(value)

    # -- scalars ----------------------------------------------------------------

    def visit_builtin(self, kind: str, name: str | None) -> Any:
        if self.keyval:
            return self._visit_keyval_scalar(kind, name)
        if kind == "any":
            return copy.deepcopy(self._get(name))
        value = self._get(name)
        if kind in ("str", "QType"):
            if not isinstance(value, str):
                raise self._type_error(name, "string")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise self._type_error(name, "boolean")
            return value
        if kind == "null":
            if value is not None:
                raise self._type_error(name, "null")
            return None
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self._type_error(name, "number")
            return float(value)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if kind in ("int", "int64", "int8", "int16", "int32"):
            if not is_int or not _INT64_MIN <= value <= _INT64_MAX:
                raise self._type_error(name, "integer")
            return self._check_range(kind, value, name)
        # uint64, size and the narrower unsigned types: negative values are
        # accepted for backward compatibility and wrap around.
        if not is_int or not _INT64_MIN <= value <= _UINT64_MAX:
            raise self._value_error(name, "uint64")
        return self._check_range(kind, value & _UINT64_MAX, name)

    def _check_range(self, kind: str, value: int, name: str | None) -> int:
        rng = INT_RANGES.get(kind)
        if rng is not None and not rng[0] <= value <= rng[1]:
            raise GenericError(
                f"Parameter '{name if name is not None else 'null'}' expects {rng[2]}")
        return value

    def _visit_keyval_scalar(self, kind: str, name: str | None) -> Any:
        if kind == "any":
            return copy.deepcopy(self._get(name))
        if kind == "null":
            if self._get(name) is not None:
                raise self._type_error(name, "null")
            return None
        text = self._get_keyval_str(name)
        if kind in ("str", "QType"):
            return text
        if kind == "bool":
            if text in _TRUE_WORDS:
                return True
            if text in _FALSE_WORDS:
                return False
            raise self._value_error(name, "'on' or 'off'")
        if kind == "number":
            num = _strtod(text)
            if num is None:
                raise self._value_error(name, "number")
            return num
        if kind == "size":
            size = _strtosz(text)
            if size is None:
                raise self._value_error(name, "size")
            return size
        val = _strtol(text)
        if kind in ("int", "int64", "int8", "int16", "int32"):
            if val is None or not _INT64_MIN <= val <= _INT64_MAX:
                raise self._value_error(name, "integer")
            return self._check_range(kind, val, name)
        if val is None or not -_UINT64_MAX <= val <= _UINT64_MAX:
            raise self._value_error(name, "integer")
        return self._check_range(kind, val & _UINT64_MAX, name)


def visit_value(typ: QAPIType, value: Any, name: str | None, *, keyval: bool,
                compat: str) -> Any:
    """Validate ``value`` as the whole input of a visit (QEMU's visitor root)."""
    return InputVisitor(value, keyval=keyval, compat=compat).visit(typ, name)


def visit_command_args(cmd: CommandDef, args: dict[str, Any] | None, *,
                       compat: str = "7.2") -> dict[str, Any]:
    """What ``qmp_marshal_<command>`` does with the arguments before the call."""
    args = {} if args is None else args
    if not cmd.gen:
        return _visit_unchecked_args(cmd, args)
    v = InputVisitor(args, compat=compat)
    v.start_struct(None)
    out: dict[str, Any] = {}
    if cmd.arg_type is not None:
        out = v.visit_members(cmd.arg_type)
    v.check_struct()
    v.end_struct()
    return out


def _visit_unchecked_args(cmd: CommandDef, args: dict[str, Any]) -> dict[str, Any]:
    """Commands with 'gen': false (device_add) take any further arguments;
    QEMU only looks the declared mandatory strings up with qdict_get_try_str(),
    so a missing or non-string one reads as missing."""
    if cmd.arg_type is not None:
        for m in cmd.arg_type.members:
            if not m.optional and not isinstance(args.get(m.name), str):
                raise GenericError(f"Parameter '{m.name}' is missing")
    return copy.deepcopy(args)
