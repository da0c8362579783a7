"""QEMU 7.2's streaming JSON reader for QMP input, reproduced byte for byte.

QEMU feeds every received byte through three stages (``qobject/json-lexer.c``,
``json-streamer.c``, ``json-parser.c``):

* a lexer DFA that cuts tokens, accepts QEMU's extensions (single-quoted
  strings, ``\\'``) and, on a lexical error, reports ``stray '<token>'`` and
  skips input until a structural character, a control character or 0xFE/0xFF;
* a streamer that counts braces/brackets, enforces the limits (64 MiB of token
  text, 2 Mi tokens, nesting 1024) and hands a token list to the parser as soon
  as the counts are balanced (or go negative);
* a recursive-descent parser whose *first* error becomes the message.

Clients see the exact error texts and the exact recovery (how many errors, which
bytes are dropped), so this module mirrors all three stages.  Values come out as
plain Python objects; errors come out as :class:`JSONParseError` values (never
raised), in arrival order, so the caller can answer each with
``{"error": {"class": "GenericError", "desc": ...}}``.

Speed: a typical command arrives as one whole, plain-ASCII object per chunk.
For that case :meth:`JSONStreamParser.feed` lets ``json.JSONDecoder.raw_decode``
find and decode the value, and accepts the result only if the consumed text
lies entirely in a token subset where QEMU and ``json`` provably agree (see
``_SUBSET``).  Everything else goes through the exact machine.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_NESTING",
    "MAX_TOKEN_COUNT",
    "MAX_TOKEN_SIZE",
    "JSONParseError",
    "JSONStreamParser",
    "qemu_decode",
    "qobject_from_json",
]

# json-streamer.c / json-lexer.c limits.
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10


@dataclass(frozen=True, slots=True)
class JSONParseError:
    """One QMP input error; ``desc`` is QEMU's text (already UTF-8 decoded QEMU's way)."""

    desc: str


# --------------------------------------------------------------------------
# QEMU's (modified) UTF-8 handling, util/unicode.c

_NONCHAR_CLASS = "\ufdd0-\ufdef" + "".join(
    f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(17)
)
_NONCHAR = re.compile(f"[{_NONCHAR_CLASS}]")


def _has_nonchar(b: bytes, s: str) -> bool:
    """Does ``s`` (the UTF-8 decoding of ``b``) hold a Unicode noncharacter?

    Noncharacters encode as EF B7 90..AF (U+FDD0..U+FDEF) or end in BF BE /
    BF BF (U+xFFFE / U+xFFFF); the byte test is a cheap necessary condition.
    """
    if b"\xef\xb7" not in b and b"\xbf\xbe" not in b and b"\xbf\xbf" not in b:
        return False
    return _NONCHAR.search(s) is not None


_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def _valid_codepoint(cp: int) -> bool:
    return not (
        cp > 0x10FFFF or 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE or 0xD800 <= cp <= 0xDFFF
    )


def _mod_utf8_codepoint(b: bytes, pos: int) -> tuple[int, int]:
    """Decode one code point at ``b[pos]`` like ``mod_utf8_codepoint(s, 6, &end)``.

    Returns ``(cp, end)``; ``cp`` is -1 for an invalid sequence.  Bytes past the
    end of ``b`` read as NUL (the C string terminator).
    """
    n = len(b)
    byte = b[pos]
    pos += 1
    if byte < 0x80:
        return byte, pos
    if byte >= 0xFE or not byte & 0x40:
        return -1, pos
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = b[pos] if pos < n else 0
        if nxt & 0xC0 != 0x80:
            return -1, pos
        pos += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if not _valid_codepoint(cp) or (cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2)):
        return -1, pos
    return cp, pos


def qemu_decode(b: bytes) -> str:
    """Bytes of a QEMU C string as the text QEMU's JSON writer would show.

    Each invalid sequence becomes U+FFFD, ``C0 80`` becomes U+0000 (modified
    UTF-8) -- exactly what ``qobject_to_json`` prints for the string.
    """
    if b.isascii():
        return b.decode("ascii")
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if not _has_nonchar(b, s):
            return s
    out: list[str] = []
    pos = 0
    n = len(b)
    while pos < n:
        cp, pos = _mod_utf8_codepoint(b, pos)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


def _cstr(b: bytes) -> bytes:
    """``b`` as C's ``%s`` prints it: cut at the first NUL."""
    nul = b.find(b"\0")
    return b if nul < 0 else b[:nul]


# --------------------------------------------------------------------------
# Lexer

# Token types (the streamer only needs to tell these apart).
_LCURLY, _RCURLY, _LSQUARE, _RSQUARE, _COLON, _COMMA = 1, 2, 3, 4, 5, 6
_INTEGER, _FLOAT, _KEYWORD, _STRING = 7, 8, 9, 10
_OVERSIZE = 11  # a partial token cut at MAX_TOKEN_SIZE (QEMU passes the lexer state)

_STRUCT_TYPE = {
    ord("{"): _LCURLY,
    ord("}"): _RCURLY,
    ord("["): _LSQUARE,
    ord("]"): _RSQUARE,
    ord(":"): _COLON,
    ord(","): _COMMA,
}

# Lexer states (json-lexer.c names).
(
    _IN_START,
    _IN_RECOVERY,
    _IN_DQ,
    _IN_DQ_ESC,
    _IN_SQ,
    _IN_SQ_ESC,
    _IN_ZERO,
    _IN_EXP_DIGITS,
    _IN_EXP_SIGN,
    _IN_EXP_E,
    _IN_MANTISSA,
    _IN_MANTISSA_DIGITS,
    _IN_DIGITS,
    _IN_SIGN,
    _IN_KEYWORD,
) = range(15)

# Complete tokens that can be cut from IN_START without the byte-wise DFA.  A
# number or keyword is only taken when the byte that ends it is present and
# cannot extend it; anything else falls back to the DFA, which is exact.
_TOKEN = re.compile(
    rb"""
    ([ \t\r\n]++)                                                   # 1 whitespace
  | ([{}\[\]:,])                                                    # 2 structural
  | ("(?:[\x20\x21\x23-\x5b\x5d-\xfd]++|\\[\x20-\xfd])*+")          # 3 "string"
  | ('(?:[\x20-\x26\x28-\x5b\x5d-\xfd]++|\\[\x20-\xfd])*+')         # 4 'string'
  | (-?(?:0(?:\.[0-9]++(?:[eE][-+]?[0-9]++)?)?                     # 5 number (IN_ZERO
        |[1-9][0-9]*+(?:\.[0-9]++)?(?:[eE][-+]?[0-9]++)?))            #   has no exponent)
    (?![0-9.eE])(?=[\x00-\xff])
  | ([a-z]++)(?=[^a-z])                                             # 6 keyword
    """,
    re.X,
)

# Inside a container: a run of tokens that neither open nor close one (so they
# cannot change the nesting or complete a value), queued in one go.
_INNER_RUN = re.compile(
    rb"""(?:
        [ \t\r\n:,]++
      | "(?:[\x20\x21\x23-\x5b\x5d-\xfd]++|\\[\x20-\xfd])*+"
      | '(?:[\x20-\x26\x28-\x5b\x5d-\xfd]++|\\[\x20-\xfd])*+'
      | -?(?:0(?:\.[0-9]++(?:[eE][-+]?[0-9]++)?)?
            |[1-9][0-9]*+(?:\.[0-9]++)?(?:[eE][-+]?[0-9]++)?)(?![0-9.eE])(?=[\x00-\xff])
      | [a-z]++(?=[^a-z])
    )++""",
    re.X,
)
_INNER_TOKENS = re.compile(
    rb"""[:,]
      | "(?:[\x20\x21\x23-\x5b\x5d-\xfd]++|\\[\x20-\xfd])*+"
      | '(?:[\x20-\x26\x28-\x5b\x5d-\xfd]++|\\[\x20-\xfd])*+'
      | -?(?:0(?:\.[0-9]++(?:[eE][-+]?[0-9]++)?)?
            |[1-9][0-9]*+(?:\.[0-9]++)?(?:[eE][-+]?[0-9]++)?)
      | [a-z]++""",
    re.X,
)
_BATCH_WINDOW = 1 << 16  # bounds the transient token list


def _classify(tok: bytes) -> int:
    c = tok[0]
    if c == 0x3A:
        return _COLON
    if c == 0x2C:
        return _COMMA
    if c == 0x22 or c == 0x27:
        return _STRING
    if 0x61 <= c <= 0x7A:
        return _KEYWORD
    if b"." in tok or b"e" in tok or b"E" in tok:
        return _FLOAT
    return _INTEGER


# Runs that keep the DFA in the same state (the token just grows).
_RUN_DQ = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\xfd]+")
_RUN_SQ = re.compile(rb"[\x20-\x26\x28-\x5b\x5d-\xfd]+")
_RUN_DIGITS = re.compile(rb"[0-9]+")
_RUN_KEYWORD = re.compile(rb"[a-z]+")
_RUN_RECOVERY = re.compile(rb"[\t\x20-\x2b\x2d-\x39\x3b-\x5a\x5c\x5e-\x7a\x7c\x7e-\xfd]+")

_DIGIT = frozenset(b"0123456789")
_WS = frozenset(b" \t\r\n")
_LOWER = frozenset(range(ord("a"), ord("z") + 1))
_STRUCT = frozenset(b"{}[]:,")

# --------------------------------------------------------------------------
# Fast path: the token subset on which QEMU and ``json`` agree.
#
# On text made only of these tokens (plus JSON whitespace), QEMU's lexer cuts
# the same tokens ``json`` does, and for a text ``json`` accepts, QEMU's parser
# builds the same value provided there are no duplicate keys (rejected by
# ``_pairs_hook``) and the nesting stays below both recursion limits:
# * strings: printable ASCII (incl. DEL), escapes \" \\ \/ \b \f \n \r \t, and
#   \uXXXX for BMP code points QEMU accepts (no surrogates, no noncharacters);
# * integers of at most 18 digits (always int64 in QEMU), any float syntax
#   except an exponent right after a lone 0 (QEMU lexes "0e5" as 0, e, 5) --
#   both sides use a correctly rounded strtod;
# * true, false, null.
_SUBSET = re.compile(
    r"""(?:
        [ \t\r\n{}\[\]:,]++
      | "(?:[\x20\x21\x23-\x5b\x5d-\x7f]++
            |\\["\\/bfnrt]
            |\\u(?![dD][89a-fA-F]|[fF][dD][dDeE]|[fF][fF][fF][eEfF])[0-9a-fA-F]{4}
         )*+"
      | -?(?:0(?:\.[0-9]++(?:[eE][-+]?[0-9]++)?)?
          |[1-9][0-9]{0,17}(?![0-9])(?:\.[0-9]++)?(?:[eE][-+]?[0-9]++)?)(?![0-9.eE])
      | true | false | null
    )*+""",
    re.X,
)
_JSON_WS = re.compile(r"[ \t\r\n]*")


class _DuplicateKey(ValueError):
    pass


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey
    return d


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs_hook)
_FAST_MAX = 1 << 24  # bigger chunks are not worth a speculative decode


class _Fail(Exception):
    """The parser's first error (QEMU keeps only the first ``parse_error``)."""

    def __init__(self, msg: bytes) -> None:
        super().__init__(msg)
        self.msg = msg


# --------------------------------------------------------------------------
# Parser (json-parser.c) over a queue of complete tokens


def _hex4(b: bytes, pos: int) -> int:
    """``cvt4hex``: four hex digits at ``pos`` or -1 (stops at the first non-hex)."""
    cp = 0
    for i in range(pos, pos + 4):
        c = b[i] if i < len(b) else 0
        if 0x30 <= c <= 0x39:
            cp = (cp << 4) | (c - 0x30)
        elif 0x61 <= c <= 0x66:
            cp = (cp << 4) | (c - 0x57)
        elif 0x41 <= c <= 0x46:
            cp = (cp << 4) | (c - 0x37)
        else:
            return -1
    return cp


_SIMPLE_ESCAPES = {
    ord('"'): '"',
    ord("'"): "'",
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}


def _decode_raw(b: bytes) -> str:
    """Unescaped string bytes, as ``parse_string``'s default branch decodes them."""
    if b.isascii():
        return b.decode("ascii")
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if not _has_nonchar(b, s):
            return s
        # A noncharacter: mod_utf8_codepoint rejects it.
        raise _Fail(b"invalid UTF-8 sequence in string")
    out: list[str] = []
    pos = 0
    while pos < len(b):
        cp, pos = _mod_utf8_codepoint(b, pos)
        if cp < 0:
            raise _Fail(b"invalid UTF-8 sequence in string")
        out.append(chr(cp))
    return "".join(out)


def _parse_string(tok: bytes) -> str:
    body_end = len(tok) - 1  # the closing quote
    if b"\\" not in tok:
        return _decode_raw(tok[1:body_end])
    out: list[str] = []
    pos = 1
    while pos < body_end:
        bs = tok.find(b"\\", pos, body_end)
        if bs < 0:
            out.append(_decode_raw(tok[pos:body_end]))
            break
        if bs > pos:
            out.append(_decode_raw(tok[pos:bs]))
        esc = tok[bs + 1]
        simple = _SIMPLE_ESCAPES.get(esc)
        if simple is not None:
            out.append(simple)
            pos = bs + 2
            continue
        if esc != ord("u"):
            raise _Fail(b"invalid escape sequence in string")
        ptr = bs + 2
        cp = _hex4(tok, ptr)
        ptr += 4
        if 0xD800 <= cp <= 0xDBFF and tok[ptr : ptr + 2] == b"\\u":
            cp = 0x10000 + ((cp & 0x3FF) << 10)
            trailing = _hex4(tok, ptr + 2)
            if 0xDC00 <= trailing <= 0xDFFF:
                cp |= trailing & 0x3FF
                ptr += 6
            else:
                cp = -1
        if cp < 0 or not _valid_codepoint(cp):
            # "%.*s": the escape text, as far as the token's C string goes.
            raise _Fail(_cstr(tok[bs:ptr]) + b" is not a valid Unicode character")
        out.append(chr(cp))
        pos = ptr
    return "".join(out)


def _parse_number(tok: bytes, is_float: bool) -> int | float:
    if not is_float:
        digits = len(tok) - (tok[0] == 0x2D)
        if digits <= 20:
            v = int(tok)
            if -(1 << 63) <= v < (1 << 64):
                return v
    return float(tok)


class _TokenQueue:
    """The streamer's token queue, stored as one byte string.

    QEMU keeps a GQueue of tokens; storing them as ``tok1 tok2 ...`` keeps our
    memory at about the token-size limit even at 2 Mi tokens, and re-cutting
    complete, space-separated tokens is unambiguous.
    """

    __slots__ = ("_it", "_peek")

    def __init__(self, buf: bytes) -> None:
        self._it = _TOKEN.finditer(buf)
        self._peek: tuple[int, bytes] | None = None
        self._advance()

    def _advance(self) -> None:
        for m in self._it:
            idx = m.lastindex
            if idx == 1:
                continue
            text = m.group(idx)  # type: ignore[arg-type]
            if idx == 2:
                self._peek = (_STRUCT_TYPE[text[0]], text)
            elif idx in (3, 4):
                self._peek = (_STRING, text)
            elif idx == 6:
                self._peek = (_KEYWORD, text)
            else:
                self._peek = (_classify(text), text)
            return
        self._peek = None

    def peek(self) -> tuple[int, bytes] | None:
        return self._peek

    def pop(self) -> tuple[int, bytes] | None:
        tok = self._peek
        if tok is not None:
            self._advance()
        return tok


_EOI = b"premature EOI"
_EXPECTING = b"expecting value"


def _parse_tokens(buf: bytes) -> Any:
    """``json_parser_parse`` on the queued tokens; raises :class:`_Fail`.

    An explicit stack replaces QEMU's recursion (nesting may reach 1024).  The
    checks run in QEMU's order so the first failure -- the reported one -- is
    the same.
    """
    q = _TokenQueue(buf)
    # Frames: [container, is_object, key_or_None]
    stack: list[list[Any]] = []
    while True:
        # ---- parse_value
        tok = q.peek()
        if tok is None:
            raise _Fail(_EOI)
        ttype, text = tok
        value: Any
        if ttype == _LCURLY or ttype == _LSQUARE:
            q.pop()
            nxt = q.peek()
            if nxt is None:
                raise _Fail(_EOI)
            is_obj = ttype == _LCURLY
            if nxt[0] == (_RCURLY if is_obj else _RSQUARE):
                q.pop()
                value = {} if is_obj else []
            else:
                stack.append([{} if is_obj else [], is_obj, None])
                continue  # parse the first member / element
        elif ttype == _STRING:
            q.pop()
            value = _parse_string(text)
        elif ttype == _INTEGER or ttype == _FLOAT:
            q.pop()
            value = _parse_number(text, ttype == _FLOAT)
        elif ttype == _KEYWORD:
            q.pop()
            if text == b"true":
                value = True
            elif text == b"false":
                value = False
            elif text == b"null":
                value = None
            else:
                # vsnprintf into a 1024-byte buffer
                raise _Fail((b"invalid keyword '" + text + b"'")[:1023])
        else:
            raise _Fail(_EXPECTING)

        # ---- a value is complete: hand it to the enclosing containers
        while True:
            if not stack:
                return value
            frame = stack[-1]
            container = frame[0]
            if frame[1]:  # object
                if frame[2] is None:  # value was the key
                    if not isinstance(value, str):
                        raise _Fail(b"key is not a string in object")
                    tok = q.pop()
                    if tok is None:
                        raise _Fail(_EOI)
                    if tok[0] != _COLON:
                        raise _Fail(b"missing : in object pair")
                    frame[2] = value
                    break  # parse the member value
                key = frame[2]
                if key in container:
                    raise _Fail(b"duplicate key")
                container[key] = value
                frame[2] = None
                tok = q.pop()
                if tok is None:
                    raise _Fail(_EOI)
                if tok[0] == _RCURLY:
                    stack.pop()
                    value = container
                    continue
                if tok[0] != _COMMA:
                    raise _Fail(b"expected separator in dict")
                if q.peek() is None:  # parse_pair's own check
                    raise _Fail(_EOI)
                break  # parse the next key
            container.append(value)
            tok = q.pop()
            if tok is None:
                raise _Fail(_EOI)
            if tok[0] == _RSQUARE:
                stack.pop()
                value = container
                continue
            if tok[0] != _COMMA:
                raise _Fail(b"expected separator in list")
            break  # parse the next element


def _parse_message(buf: bytes, fast: bool = True) -> Any:
    """Parse one balanced token queue: a value or a :class:`JSONParseError`."""
    if fast and buf.isascii():
        text = buf.decode("ascii")
        if _SUBSET.fullmatch(text):
            try:
                return json.loads(text, object_pairs_hook=_pairs_hook)
            except (ValueError, RecursionError):
                pass  # structurally bad or duplicate key: let the exact parser say why
    try:
        return _parse_tokens(buf)
    except _Fail as fail:
        return JSONParseError(qemu_decode(b"JSON parse error, " + fail.msg))


# --------------------------------------------------------------------------
# Lexer + streamer


class JSONStreamParser:
    """Incremental QMP input reader: ``feed`` bytes, get values and errors.

    Equivalent to QEMU 7.2's ``JSONMessageParser`` as used by the QMP monitor
    (no interpolation).  Thread-unsafe; one instance per connection; call
    :meth:`reset` when a new client connects (QEMU re-creates the parser).
    """

    __slots__ = ("_brace", "_bracket", "_fast_ok", "_ntokens", "_out", "_queue", "_state", "_tok")

    def __init__(self, *, fast: bool = True) -> None:
        """``fast=False`` disables every ``json``/regex shortcut (for testing)."""
        self._fast_ok = fast
        self._out: list[Any] = []
        self.reset()

    def reset(self) -> None:
        """Forget all partial input (a fresh parser, as after a reconnect)."""
        self._state = _IN_START
        self._tok = bytearray()
        self._queue = bytearray()
        self._ntokens = 0
        self._brace = 0
        self._bracket = 0

    # -- public API -----------------------------------------------------

    def feed(self, data: bytes) -> list[Any]:
        """Consume ``data``; return the complete values and errors it finished."""
        out: list[Any] = []
        self._out = out
        if (
            self._fast_ok
            and self._state == _IN_START
            and not self._ntokens
            and len(data) <= _FAST_MAX
            and data.isascii()
        ):
            data = self._fast(data, out)
            if not data:
                return out
        self._lex(data)
        return out

    def flush(self) -> list[Any]:
        """End of input (``json_message_parser_flush``), for whole texts.

        The partial token is finished (a number or keyword) or reported as
        stray (a string, a lone ``-``, ...), then whatever is queued is parsed
        -- which yields e.g. "premature EOI" for an unclosed object.  The QMP
        monitor never flushes; :func:`qobject_from_json` does.
        """
        out: list[Any] = []
        self._out = out
        state = self._state
        if state in (_IN_ZERO, _IN_DIGITS):
            self._emit_tok(_INTEGER)
        elif state in (_IN_MANTISSA_DIGITS, _IN_EXP_DIGITS):
            self._emit_tok(_FLOAT)
        elif state == _IN_KEYWORD:
            self._emit_tok(_KEYWORD)
        elif state != _IN_START and state != _IN_RECOVERY:
            self._lex_error()
        self._state = _IN_START
        if self._ntokens:
            buf = bytes(self._queue)
            self._reset_queue()
            out.append(_parse_message(buf, self._fast_ok))
        return out

    # -- fast path --------------------------------------------------------

    def _fast(self, data: bytes, out: list[Any]) -> bytes:
        """Decode leading whole objects/arrays the exact way; return the rest.

        Only called in the lexer's start state with an empty queue, so QEMU
        would see exactly the same bytes from a clean slate.
        """
        text = data.decode("ascii")
        n = len(text)
        i = _JSON_WS.match(text).end()  # type: ignore[union-attr]
        while i < n and text[i] in "{[":
            try:
                value, end = _DECODER.raw_decode(text, i)
            except (ValueError, RecursionError):
                break
            # Within the limits QEMU enforces while queueing (token_size +
            # len + 1 <= span + 1, tokens <= span bytes, depth <= brackets)?
            span = end - i
            if (
                span > _FAST_MAX
                or span >= MAX_TOKEN_SIZE
                or span > MAX_TOKEN_COUNT
                or text.count("[", i, end) + text.count("{", i, end) > MAX_NESTING
                or not _SUBSET.fullmatch(text, i, end)
            ):
                break
            out.append(value)
            i = _JSON_WS.match(text, end).end()  # type: ignore[union-attr]
        if i == n:
            return b""
        return data[i:]

    # -- streamer (json-streamer.c) ----------------------------------------

    def _reset_queue(self) -> None:
        self._queue.clear()
        self._ntokens = 0
        self._brace = 0
        self._bracket = 0

    def _error(self, desc: str) -> None:
        self._reset_queue()
        self._out.append(JSONParseError(desc))

    def _stray(self, token: bytes) -> None:
        self._error(qemu_decode(b"JSON parse error, stray '" + _cstr(token) + b"'"))

    def _token(self, ttype: int, text: bytes) -> None:
        """``json_message_process_token`` for a non-error token."""
        if ttype == _LCURLY:
            self._brace += 1
        elif ttype == _RCURLY:
            self._brace -= 1
        elif ttype == _LSQUARE:
            self._bracket += 1
        elif ttype == _RSQUARE:
            self._bracket -= 1
        queue = self._queue
        # token_size is the queued text without our separators
        if len(queue) - self._ntokens + len(text) + 1 > MAX_TOKEN_SIZE:
            self._error("JSON token size limit exceeded")
            return
        if self._ntokens + 1 > MAX_TOKEN_COUNT:
            self._error("JSON token count limit exceeded")
            return
        if self._bracket + self._brace > MAX_NESTING:
            self._error("JSON nesting depth limit exceeded")
            return
        queue += text
        queue.append(0x20)
        self._ntokens += 1
        if (self._brace > 0 or self._bracket > 0) and self._brace >= 0 and self._bracket >= 0:
            return
        buf = bytes(queue)
        self._reset_queue()
        self._out.append(_parse_message(buf, self._fast_ok))

    # -- lexer (json-lexer.c) -----------------------------------------------

    def _lex(self, data: bytes) -> None:
        n = len(data)
        pos = 0
        token_re = _TOKEN.match
        fast = self._fast_ok
        while pos < n:
            if fast and self._state == _IN_START:
                if self._ntokens:
                    end = self._batch(data, pos)
                    if end != pos:
                        pos = end
                        continue
                m = token_re(data, pos)
                if m is not None:
                    idx = m.lastindex
                    end = m.end()
                    if idx == 1:
                        pos = end
                        continue
                    if end - pos <= MAX_TOKEN_SIZE:
                        text = data[pos:end]
                        if idx == 2:
                            self._token(_STRUCT_TYPE[data[pos]], text)
                        elif idx == 3 or idx == 4:
                            self._token(_STRING, text)
                        elif idx == 6:
                            self._token(_KEYWORD, text)
                        else:
                            self._token(_classify(text), text)
                        pos = end
                        continue
            pos = self._step(data, pos)

    def _batch(self, data: bytes, pos: int) -> int:
        """Queue a run of inner tokens at ``data[pos]`` at once; return its end.

        Only when no token of the run can hit a limit (then none is longer than
        MAX_TOKEN_SIZE either, so the lexer would not have cut one); otherwise
        (rare) the tokens go through :meth:`_token` one by one, up to one the
        lexer itself would cut.
        """
        m = _INNER_RUN.match(data, pos, min(len(data), pos + _BATCH_WINDOW))
        if m is None:
            return pos
        end = m.end()
        toks = _INNER_TOKENS.findall(data, pos, end)
        if not toks:
            return end
        queue = self._queue
        size = sum(map(len, toks))
        token_size = len(queue) - self._ntokens
        if token_size + size + 1 <= MAX_TOKEN_SIZE and self._ntokens + len(toks) <= MAX_TOKEN_COUNT:
            queue += b" ".join(toks)
            queue.append(0x20)
            self._ntokens += len(toks)
            return end
        for tm in _INNER_TOKENS.finditer(data, pos, end):
            tok = tm.group()
            if len(tok) > MAX_TOKEN_SIZE:
                return tm.start()  # the lexer cuts this one: leave it to the DFA
            self._token(_classify(tok), tok)
        return end

    def _emit_tok(self, ttype: int) -> None:
        text = bytes(self._tok)
        self._tok.clear()
        self._state = _IN_START
        self._token(ttype, text)

    def _lex_error(self) -> None:
        text = bytes(self._tok)
        self._tok.clear()
        self._state = _IN_RECOVERY
        self._stray(text)

    def _check_size(self) -> None:
        """The lexer's own cut: a partial token longer than MAX_TOKEN_SIZE."""
        if len(self._tok) > MAX_TOKEN_SIZE:
            text = bytes(self._tok)
            self._tok.clear()
            self._state = _IN_START
            self._token(_OVERSIZE, text)

    def _run(self, run: re.Pattern[bytes], data: bytes, pos: int) -> int:
        """Extend the current token by a run of same-state bytes (size-capped)."""
        budget = MAX_TOKEN_SIZE + 1 - len(self._tok)
        m = run.match(data, pos, min(len(data), pos + budget))
        if m is None:
            return pos
        end = m.end()
        self._tok += data[pos:end]
        self._check_size()
        return end

    def _step(self, data: bytes, pos: int) -> int:
        """Feed ``data[pos]`` (and a run of bytes like it) through the DFA."""
        state = self._state
        ch = data[pos]
        tok = self._tok

        if state == _IN_RECOVERY:
            m = _RUN_RECOVERY.match(data, pos)
            if m is not None:
                return m.end()
            self._state = _IN_START  # lookahead: the byte is lexed again
            return self._start_byte(data, pos)
        if state == _IN_START:
            return self._start_byte(data, pos)

        if state == _IN_DQ or state == _IN_SQ:
            dq = state == _IN_DQ
            end = self._run(_RUN_DQ if dq else _RUN_SQ, data, pos)
            if end != pos or self._state != state:
                return end
            tok.append(ch)
            if ch == (0x22 if dq else 0x27):
                self._emit_tok(_STRING)
            elif ch == 0x5C:
                self._state = _IN_DQ_ESC if dq else _IN_SQ_ESC
                self._check_size()
            else:
                self._lex_error()
            return pos + 1
        if state == _IN_DQ_ESC or state == _IN_SQ_ESC:
            tok.append(ch)
            if 0x20 <= ch <= 0xFD:
                self._state = _IN_DQ if state == _IN_DQ_ESC else _IN_SQ
                self._check_size()
            else:
                self._lex_error()
            return pos + 1

        if state in (_IN_DIGITS, _IN_MANTISSA_DIGITS, _IN_EXP_DIGITS):
            end = self._run(_RUN_DIGITS, data, pos)
            if end != pos or self._state != state:
                return end
            if state != _IN_EXP_DIGITS and (ch == 0x65 or ch == 0x45):
                tok.append(ch)
                self._state = _IN_EXP_E
                self._check_size()
                return pos + 1
            if state == _IN_DIGITS and ch == 0x2E:
                tok.append(ch)
                self._state = _IN_MANTISSA
                self._check_size()
                return pos + 1
            self._emit_tok(_INTEGER if state == _IN_DIGITS else _FLOAT)
            return pos  # lookahead
        if state == _IN_KEYWORD:
            end = self._run(_RUN_KEYWORD, data, pos)
            if end != pos or self._state != state:
                return end
            self._emit_tok(_KEYWORD)
            return pos  # lookahead
        if state == _IN_ZERO:
            if ch in _DIGIT:
                tok.append(ch)
                self._lex_error()
                return pos + 1
            if ch == 0x2E:
                tok.append(ch)
                self._state = _IN_MANTISSA
                self._check_size()
                return pos + 1
            self._emit_tok(_INTEGER)
            return pos  # lookahead

        # States that need exactly one byte of a given kind.
        tok.append(ch)
        nxt = -1
        if state == _IN_SIGN:
            if ch == 0x30:
                nxt = _IN_ZERO
            elif ch in _DIGIT:
                nxt = _IN_DIGITS
        elif state == _IN_EXP_E:
            if ch == 0x2B or ch == 0x2D:
                nxt = _IN_EXP_SIGN
            elif ch in _DIGIT:
                nxt = _IN_EXP_DIGITS
        elif state == _IN_MANTISSA:
            if ch in _DIGIT:
                nxt = _IN_MANTISSA_DIGITS
        elif state == _IN_EXP_SIGN:
            if ch in _DIGIT:
                nxt = _IN_EXP_DIGITS
        if nxt < 0:
            self._lex_error()
        else:
            self._state = nxt
            self._check_size()
        return pos + 1

    def _start_byte(self, data: bytes, pos: int) -> int:
        """One byte in IN_START (the regex could not cut a whole token here)."""
        ch = data[pos]
        if ch in _WS:
            return pos + 1
        if ch in _STRUCT:
            self._token(_STRUCT_TYPE[ch], bytes((ch,)))
            return pos + 1
        tok = self._tok
        tok.append(ch)
        if ch == 0x22:
            self._state = _IN_DQ
        elif ch == 0x27:
            self._state = _IN_SQ
        elif ch == 0x30:
            self._state = _IN_ZERO
        elif ch in _DIGIT:
            self._state = _IN_DIGITS
        elif ch == 0x2D:
            self._state = _IN_SIGN
        elif ch in _LOWER:
            self._state = _IN_KEYWORD
        else:
            self._lex_error()
        return pos + 1


def qobject_from_json(text: bytes | str) -> Any:
    """QEMU's ``qobject_from_json``: exactly one JSON value from a whole text.

    Used for JSON on the command line (``--blockdev '{...}'``, ``json:``
    filenames).  Raises :class:`blockd.qmp.errors.GenericError` with QEMU's
    text: the value's parse error, "Expecting at most one JSON value" or
    "Expecting a JSON value".  Like C, the text ends at a NUL.
    """
    from blockd.qmp.errors import GenericError

    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    parser = JSONStreamParser()
    items = parser.feed(_cstr(text)) + parser.flush()
    if not items:
        raise GenericError("Expecting a JSON value")
    if len(items) > 1 and not isinstance(items[0], JSONParseError):
        # consume_json(): a second item replaces the value with this error
        raise GenericError("Expecting at most one JSON value")
    if isinstance(items[0], JSONParseError):
        raise GenericError(items[0].desc)
    return items[0]
