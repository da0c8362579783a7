"""QEMU's dotted ``key=value`` option syntax (``util/keyval.c``).

``a.b=1,a.c=x,,y`` becomes ``{'a': {'b': '1', 'c': 'x,y'}}``; a level whose
keys are all numbers becomes a list.  Values stay strings: converting them is
the keyval input visitor's job (``Schema.visit_keyval``).  Error texts are
QEMU's.
"""

from __future__ import annotations

from typing import Any

from blockd.qmp.errors import GenericError

_INT_MAX = 2**31 - 1
_KEY_FRAGMENT_MAX = 127  # key_in_cur[128]


def _parse_qapi_name(s: str, start: int) -> int:
    """Length of the QAPI name at ``s[start:]`` (parse_qapi_name, incomplete), or -1."""
    p = start
    n = len(s)
    if p < n and s[p] == "_":  # downstream extension prefix __RFQDN_
        p += 1
        if p >= n or s[p] != "_":
            return -1
        p += 1
        while p < n and ((s[p].isascii() and s[p].isalnum()) or s[p] in "-."):
            p += 1
        if p >= n or s[p] != "_":
            return -1
        p += 1
    if p >= n or not (s[p].isascii() and s[p].isalpha()):
        return -1
    p += 1
    while p < n and ((s[p].isascii() and s[p].isalnum()) or s[p] in "-_"):
        p += 1
    return p - start


def _key_to_index(key: str, start: int = 0) -> tuple[int, int]:
    """(index, end) of a decimal list index at ``key[start:]``; index -1 if none."""
    if start >= len(key) or not "0" <= key[start] <= "9":
        return -1, start
    end = start
    while end < len(key) and "0" <= key[end] <= "9":
        end += 1
    return min(int(key[start:end]), _INT_MAX), end


def _is_index(key: str) -> bool:
    index, end = _key_to_index(key)
    return index >= 0 and end == len(key)


def _help_len(s: str) -> int:
    """starts_with_help_option(): length of a leading 'help' or '?'."""
    if s.startswith("?"):
        return 1
    if s.startswith("help"):
        return 4
    return 0


def _put(cur: dict[str, Any], key_in_cur: str, value: str | None, key_shown: str) -> Any:
    old = cur.get(key_in_cur)
    if old is not None:
        if isinstance(old, str) != (value is not None):
            raise GenericError(f"Parameters '{key_shown}.*' used inconsistently")
        if value is None:
            return old
    new: Any = value if value is not None else {}
    cur[key_in_cur] = new
    return new


def _parse_one(qdict: dict[str, Any], params: str, pos: int, implied_key: str | None
               ) -> tuple[int, bool]:
    """Parse one ``key=value`` starting at ``params[pos]``; returns (next pos, help)."""
    n = len(params)
    seg_end = pos
    while seg_end < n and params[seg_end] not in "=,":
        seg_end += 1
    length = seg_end - pos
    key = params
    key_start = pos
    val_end: int | None = None
    if length and (seg_end >= n or params[seg_end] != "="):
        if _help_len(params[pos:]) == length:
            nxt = seg_end + 1 if seg_end < n and params[seg_end] == "," else seg_end
            return nxt, True
        if implied_key is not None:
            key = implied_key
            key_start = 0
            val_end = seg_end
            length = len(implied_key)
    key_end = key_start + length

    cur = qdict
    s = key_start
    key_in_cur = ""
    while True:
        if s != key_start and _key_to_index(key, s)[0] >= 0:
            frag_len = _key_to_index(key, s)[1] - s
        else:
            ret = _parse_qapi_name(key[:key_end], s)
            frag_len = max(ret, 0)
        if not frag_len or (s + frag_len < key_end and key[s + frag_len] != "."):
            raise GenericError(f"Invalid parameter '{key[key_start:key_end]}'")
        if frag_len > _KEY_FRAGMENT_MAX:
            fragment = " fragment" if s != key_start or s + frag_len != key_end else ""
            raise GenericError(f"Parameter{fragment} '{key[s:s + frag_len]}' is too long")
        if s != key_start:
            cur = _put(cur, key_in_cur, None, key[key_start:s - 1])
        key_in_cur = key[s:s + frag_len]
        s += frag_len
        if s >= key_end or key[s] != ".":
            break
        s += 1

    if val_end is not None:
        value = params[pos:val_end]
        nxt = val_end + 1 if val_end < n and params[val_end] == "," else val_end
    else:
        if s >= n or params[s] != "=":
            raise GenericError(f"Expected '=' after parameter '{key[key_start:s]}'")
        s += 1
        chars: list[str] = []
        while s < n:
            if params[s] == ",":
                s += 1
                if s >= n or params[s] != ",":
                    break
            chars.append(params[s])
            s += 1
        value = "".join(chars)
        nxt = s
    _put(cur, key_in_cur, value, key[key_start:key_end])
    return nxt, False


def _listify(cur: dict[str, Any], key_of_cur: list[str]) -> Any:
    """Turn levels keyed by indexes into lists (keyval_listify)."""
    has_index = has_member = False
    for k, v in list(cur.items()):
        if _is_index(k) or _key_to_index(k)[0] >= 0:
            has_index = True
        else:
            has_member = True
        if isinstance(v, dict):
            cur[k] = _listify(v, [*key_of_cur, k])
    prefix = "".join(k + "." for k in key_of_cur)
    if has_index and has_member:
        raise GenericError(f"Parameters '{prefix}*' used inconsistently")
    if not has_index:
        return cur
    nelt = len(cur) + 1
    elt: list[Any] = [None] * nelt
    max_index = -1
    for k, v in cur.items():
        index = _key_to_index(k)[0]
        max_index = max(max_index, index)
        if index >= nelt - 1:
            continue
        elt[index] = v
    out: list[Any] = []
    for i in range(min(nelt, max_index + 1)):
        if elt[i] is None:
            raise GenericError(f"Parameter '{prefix}{i}' missing")
        out.append(elt[i])
    return out


def keyval_parse_help(text: str, implied_key: str | None = None) -> tuple[dict[str, Any], bool]:
    """Parse ``text``; the flag says whether 'help' or '?' was among the params."""
    qdict: dict[str, Any] = {}
    pos = 0
    want_help = False
    while pos < len(text):
        pos, is_help = _parse_one(qdict, text, pos, implied_key)
        want_help = want_help or is_help
        implied_key = None
    result = _listify(qdict, [])
    assert isinstance(result, dict)
    return result, want_help


def keyval_parse(text: str, implied_key: str | None = None) -> dict[str, Any]:
    """Parse ``text`` into nested dicts/lists of strings; help requests are errors."""
    result, want_help = keyval_parse_help(text, implied_key)
    if want_help:
        raise GenericError("Help is not available for this option")
    return result
