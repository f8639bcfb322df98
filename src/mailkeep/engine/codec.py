"""A small, versioned, self-delimiting encoding for the values the engine logs.

Invariant: decoding never executes anything and never trusts a length beyond the buffer it
was given; a damaged buffer raises ``ValueError`` (the caller turns that into an ESE error
naming the file). Supported values: None, bool, int (64-bit signed or arbitrary via text),
float, str, bytes, and lists/tuples/dicts of these (tuples decode as lists).
"""

from __future__ import annotations

import struct
from typing import Any

_NONE, _FALSE, _TRUE, _INT, _BIGINT, _FLOAT, _STR, _BYTES, _LIST, _DICT = range(10)
_Q = struct.Struct("<q")
_D = struct.Struct("<d")
_L = struct.Struct("<I")
MAX_DEPTH = 64


def encode(value: Any) -> bytes:
    out = bytearray()
    _enc(value, out, 0)
    return bytes(out)


def _enc(v: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:  # never log a value that decode() would refuse
        raise ValueError("value nested too deeply")
    if v is None:
        out.append(_NONE)
    elif v is True:
        out.append(_TRUE)
    elif v is False:
        out.append(_FALSE)
    elif isinstance(v, int):
        if -(1 << 63) <= v < (1 << 63):
            out.append(_INT)
            out += _Q.pack(v)
        else:
            b = str(v).encode()
            out.append(_BIGINT)
            out += _L.pack(len(b)) + b
    elif isinstance(v, float):
        out.append(_FLOAT)
        out += _D.pack(v)
    elif isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        out.append(_STR)
        out += _L.pack(len(b)) + b
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        out.append(_BYTES)
        out += _L.pack(len(b)) + b
    elif isinstance(v, (list, tuple)):
        out.append(_LIST)
        out += _L.pack(len(v))
        for item in v:
            _enc(item, out, depth + 1)
    elif isinstance(v, dict):
        out.append(_DICT)
        out += _L.pack(len(v))
        for k, item in v.items():
            _enc(k, out, depth + 1)
            _enc(item, out, depth + 1)
    else:
        raise TypeError(f"cannot log a value of type {type(v).__name__}")


def decode(data: bytes) -> Any:
    value, pos = _dec(memoryview(data), 0, 0)
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after value")
    return value


def _need(buf: memoryview, pos: int, n: int) -> None:
    if n < 0 or pos + n > len(buf):
        raise ValueError(f"value truncated at byte {pos}")


def _dec(buf: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    _need(buf, pos, 1)
    tag = buf[pos]
    pos += 1
    if tag == _NONE:
        return None, pos
    if tag == _TRUE:
        return True, pos
    if tag == _FALSE:
        return False, pos
    if tag == _INT:
        _need(buf, pos, 8)
        return _Q.unpack_from(buf, pos)[0], pos + 8
    if tag == _FLOAT:
        _need(buf, pos, 8)
        return _D.unpack_from(buf, pos)[0], pos + 8
    if tag in (_STR, _BYTES, _BIGINT):
        _need(buf, pos, 4)
        (n,) = _L.unpack_from(buf, pos)
        pos += 4
        _need(buf, pos, n)
        raw = bytes(buf[pos : pos + n])
        pos += n
        if tag == _BYTES:
            return raw, pos
        if tag == _STR:
            return raw.decode("utf-8", "surrogatepass"), pos
        return int(raw.decode("ascii")), pos
    if tag in (_LIST, _DICT):
        _need(buf, pos, 4)
        (n,) = _L.unpack_from(buf, pos)
        pos += 4
        _need(buf, pos, n)  # every item takes at least one byte
        if tag == _LIST:
            items = []
            for _ in range(n):
                item, pos = _dec(buf, pos, depth + 1)
                items.append(item)
            return items, pos
        d = {}
        for _ in range(n):
            k, pos = _dec(buf, pos, depth + 1)
            item, pos = _dec(buf, pos, depth + 1)
            try:
                d[_key(k)] = item
            except TypeError as e:  # damage put a dict where a key belongs
                raise ValueError(f"unhashable dict key before byte {pos}") from e
        return d, pos
    raise ValueError(f"unknown value tag {tag} at byte {pos - 1}")


def _key(k: Any) -> Any:
    """A tuple key (nested tuples too) was encoded as a list: make it hashable again."""
    return tuple(_key(x) for x in k) if isinstance(k, list) else k
