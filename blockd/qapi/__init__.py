"""blockd's QAPI machinery: the QMP schema, input validation, introspection.

``Schema.load_default()`` is the entry point; ``keyval_parse`` turns a
command-line option string into the nested dicts ``Schema.visit_keyval`` takes.
"""

from blockd.qapi.keyval import keyval_parse, keyval_parse_help
from blockd.qapi.parser import QAPISchemaError
from blockd.qapi.schema import Schema
from blockd.qapi.types import CommandDef, EventDef

__all__ = ["CommandDef", "EventDef", "QAPISchemaError", "Schema", "keyval_parse",
           "keyval_parse_help"]
