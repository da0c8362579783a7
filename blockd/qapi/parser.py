"""Reader for QAPI schema files.

QAPI schema syntax is not JSON: strings are single-quoted, ``#`` starts a
comment, and files pull in others with ``{ 'include': 'file.json' }``.  As a
blockd extension, integer literals are accepted so that a member's long form
can carry a ``'default'``.  The reader returns the definitions grouped by
module, modules in the order QEMU's generator registers them (depth-first order
of first inclusion), because that order decides the command order of
``query-commands`` and ``query-qmp-schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class QAPISchemaError(Exception):
    """A schema file is malformed or refers to something undefined."""


@dataclass
class Definition:
    """One top-level expression with where it came from."""

    expr: dict[str, Any]
    fname: str
    line: int


@dataclass
class Module:
    name: str
    definitions: list[Definition] = field(default_factory=list)


class _Tokenizer:
    """Turns one QAPI file into Python values, one top-level dict at a time."""

    def __init__(self, text: str, fname: str) -> None:
        self.text = text
        self.fname = fname
        self.pos = 0
        self.line = 1

    def error(self, msg: str) -> QAPISchemaError:
        return QAPISchemaError(f"{self.fname}:{self.line}: {msg}")

    def _skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == "\n":
                self.line += 1
                self.pos += 1
            elif ch in " \t\r":
                self.pos += 1
            elif ch == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def at_end(self) -> bool:
        self._skip_space()
        return self.pos >= len(self.text)

    def _peek(self) -> str:
        self._skip_space()
        if self.pos >= len(self.text):
            raise self.error("unexpected end of file")
        return self.text[self.pos]

    def _expect(self, ch: str) -> None:
        if self._peek() != ch:
            raise self.error(f"expected '{ch}'")
        self.pos += 1

    def value(self) -> Any:
        ch = self._peek()
        if ch == "{":
            return self._dict()
        if ch == "[":
            return self._list()
        if ch == "'":
            return self._string()
        return self._word()

    def _dict(self) -> dict[str, Any]:
        self._expect("{")
        out: dict[str, Any] = {}
        if self._peek() == "}":
            self.pos += 1
            return out
        while True:
            if self._peek() != "'":
                raise self.error("expected string as dictionary key")
            key = self._string()
            if key in out:
                raise self.error(f"duplicate key '{key}'")
            self._expect(":")
            out[key] = self.value()
            ch = self._peek()
            self.pos += 1
            if ch == "}":
                return out
            if ch != ",":
                raise self.error("expected ',' or '}'")

    def _list(self) -> list[Any]:
        self._expect("[")
        out: list[Any] = []
        if self._peek() == "]":
            self.pos += 1
            return out
        while True:
            out.append(self.value())
            ch = self._peek()
            self.pos += 1
            if ch == "]":
                return out
            if ch != ",":
                raise self.error("expected ',' or ']'")

    def _string(self) -> str:
        self.pos += 1  # opening quote
        chars: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text) or text[self.pos] == "\n":
                raise self.error("missing terminating \"'\"")
            ch = text[self.pos]
            self.pos += 1
            if ch == "'":
                return "".join(chars)
            if ch == "\\":
                if self.pos >= len(text):
                    raise self.error("missing terminating \"'\"")
                ch = text[self.pos]
                self.pos += 1
            chars.append(ch)

    def _word(self) -> Any:
        start = self.pos
        text = self.text
        while self.pos < len(text) and (text[self.pos].isalnum() or text[self.pos] in "-_"):
            self.pos += 1
        word = text[start:self.pos]
        if word == "true":
            return True
        if word == "false":
            return False
        try:
            return int(word, 0)
        except ValueError:
            raise self.error(f"stray '{word or text[start]}'") from None


def parse_file(path: Path) -> list[Definition]:
    """Parse one file without following includes."""
    tok = _Tokenizer(path.read_text(encoding="utf-8"), path.name)
    defs: list[Definition] = []
    while not tok.at_end():
        line = tok.line
        expr = tok.value()
        if not isinstance(expr, dict):
            raise tok.error("top-level expression must be an object")
        defs.append(Definition(expr, path.name, line))
    return defs


def parse_schema(main: Path) -> list[Module]:
    """Parse ``main`` and everything it includes, grouped into modules.

    A file included a second time contributes nothing, as in QEMU.
    """
    modules: dict[Path, Module] = {}

    def visit(path: Path) -> None:
        path = path.resolve()
        if path in modules:
            return
        module = Module(path.name)
        modules[path] = module
        for d in parse_file(path):
            if "include" in d.expr:
                inc = d.expr["include"]
                if not isinstance(inc, str):
                    raise QAPISchemaError(
                        f"{d.fname}:{d.line}: value of 'include' must be a string")
                visit(path.parent / inc)
            else:
                module.definitions.append(d)

    visit(main)
    return list(modules.values())
