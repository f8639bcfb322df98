"""codec: the self-delimiting value encoding the log and headers are made of."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.engine import codec

# Tags are persisted: a change here breaks every existing log.
NONE, FALSE, TRUE, INT, BIGINT, FLOAT, STR, BYTES, LIST, DICT = range(10)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (None, bytes([NONE])),
        (False, bytes([FALSE])),
        (True, bytes([TRUE])),
        (0, bytes([INT]) + struct.pack("<q", 0)),
        (-1, bytes([INT]) + struct.pack("<q", -1)),
        (2**63 - 1, bytes([INT]) + struct.pack("<q", 2**63 - 1)),
        (-(2**63), bytes([INT]) + struct.pack("<q", -(2**63))),
        (2**63, bytes([BIGINT]) + u32(19) + b"9223372036854775808"),
        (-(2**63) - 1, bytes([BIGINT]) + u32(20) + b"-9223372036854775809"),
        (1.5, bytes([FLOAT]) + struct.pack("<d", 1.5)),
        ("", bytes([STR]) + u32(0)),
        ("hé", bytes([STR]) + u32(3) + "hé".encode()),
        (b"", bytes([BYTES]) + u32(0)),
        (b"\x00\xff", bytes([BYTES]) + u32(2) + b"\x00\xff"),
        ([], bytes([LIST]) + u32(0)),
        ([None, True], bytes([LIST]) + u32(2) + bytes([NONE, TRUE])),
        ({}, bytes([DICT]) + u32(0)),
        ({"a": None}, bytes([DICT]) + u32(1) + bytes([STR]) + u32(1) + b"a" + bytes([NONE])),
    ],
)
def test_exact_encoding(value: object, encoded: bytes) -> None:
    assert codec.encode(value) == encoded
    assert codec.decode(encoded) == value
    assert type(codec.decode(encoded)) is type(value)


def test_bool_is_not_int() -> None:
    assert codec.decode(codec.encode(True)) is True
    assert codec.decode(codec.encode(False)) is False
    assert codec.decode(codec.encode(1)) == 1
    assert type(codec.decode(codec.encode(1))) is int
    assert codec.encode(1) != codec.encode(True)


@pytest.mark.parametrize("n", [2**64, -(2**64), 10**100, -(10**300)])
def test_big_ints_round_trip(n: int) -> None:
    assert codec.encode(n)[0] == BIGINT
    assert codec.decode(codec.encode(n)) == n


def test_floats_round_trip_exactly() -> None:
    for f in (0.0, -0.0, 1e-308, 1.7976931348623157e308, math.inf, -math.inf, 0.1):
        back = codec.decode(codec.encode(f))
        assert back == f
        assert math.copysign(1.0, back) == math.copysign(1.0, f)
    assert math.isnan(codec.decode(codec.encode(math.nan)))


def test_bytearray_and_memoryview_decode_as_bytes() -> None:
    assert codec.decode(codec.encode(bytearray(b"ab"))) == b"ab"
    assert codec.decode(codec.encode(memoryview(b"cd"))) == b"cd"
    assert type(codec.decode(codec.encode(bytearray(b"ab")))) is bytes


def test_lone_surrogates_survive() -> None:
    s = "a\udc80b"
    assert codec.decode(codec.encode(s)) == s


def test_tuples_decode_as_lists() -> None:
    assert codec.decode(codec.encode((1, (2, "x"), []))) == [1, [2, "x"], []]


def test_tuple_dict_keys_stay_hashable() -> None:
    value = {(1, "a"): "flat", (2, (3, 4)): "nested", 5: "int", None: "none"}
    assert codec.decode(codec.encode(value)) == value


def test_dict_order_is_preserved() -> None:
    value = {"z": 1, "a": 2, "m": 3}
    assert list(codec.decode(codec.encode(value))) == ["z", "a", "m"]


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = codec.encode({"k": [1, 2]})
    assert codec.decode(bytearray(data)) == {"k": [1, 2]}
    assert codec.decode(memoryview(data)) == {"k": [1, 2]}


@pytest.mark.parametrize("value", [{1, 2}, object(), 1j, frozenset(), [1, {2}]])
def test_unsupported_types_refused(value: object) -> None:
    with pytest.raises(TypeError, match="cannot log a value of type"):
        codec.encode(value)


def nested(levels: int) -> list[object]:
    v: list[object] = []
    for _ in range(levels - 1):
        v = [v]
    return v


def test_nesting_limit_is_the_same_both_ways() -> None:
    # 65 nested lists: the innermost sits at depth 64, the deepest allowed.
    ok = nested(65)
    assert codec.decode(codec.encode(ok)) == ok
    # One more level is refused when encoding, so nothing undecodable is ever logged.
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.encode(nested(66))
    assert codec.decode(codec.encode(nested(65) + [None])) == nested(65) + [None]
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.encode([nested(65)])


def test_nesting_limit_allows_scalars_at_depth_64() -> None:
    v: object = 1
    for _ in range(64):
        v = [v]
    assert codec.decode(codec.encode(v)) == v
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.encode([v])


def test_decode_refuses_hand_made_deep_nesting() -> None:
    data = (bytes([LIST]) + u32(1)) * 66 + bytes([LIST]) + u32(0)
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.decode(data)


# -- damaged buffers: always ValueError, never anything else ---------------------------------

SAMPLE = {"id": 7, "name": "inbox", "blob": b"\x01\x02", "rows": [1, -2.5, None, True, "é"], "big": 2**70}


def test_every_truncation_is_value_error() -> None:
    data = codec.encode(SAMPLE)
    for n in range(len(data)):
        with pytest.raises(ValueError):
            codec.decode(data[:n])


def test_trailing_bytes_refused() -> None:
    with pytest.raises(ValueError, match="1 trailing bytes after value"):
        codec.decode(codec.encode(5) + b"\x00")


def test_unknown_tag_refused() -> None:
    with pytest.raises(ValueError, match="unknown value tag 10 at byte 0"):
        codec.decode(bytes([10]))
    with pytest.raises(ValueError, match="unknown value tag 255 at byte 5"):
        codec.decode(bytes([LIST]) + u32(1) + bytes([255]))


def test_length_beyond_buffer_refused_without_allocating() -> None:
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(bytes([BYTES]) + u32(0xFFFFFFFF) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(bytes([LIST]) + u32(0xFFFFFFFF))
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(bytes([DICT]) + u32(1000) + bytes([NONE]) * 10)


def test_bad_text_refused() -> None:
    with pytest.raises(ValueError):
        codec.decode(bytes([STR]) + u32(1) + b"\xff")
    with pytest.raises(ValueError):
        codec.decode(bytes([BIGINT]) + u32(3) + b"1x2")
    with pytest.raises(ValueError):
        codec.decode(bytes([BIGINT]) + u32(1) + b"\xe9")


def test_dict_as_key_is_value_error() -> None:
    # A dict where a key belongs (only damage can make this) is a ValueError, not TypeError.
    data = bytes([DICT]) + u32(1) + bytes([DICT]) + u32(0) + bytes([NONE])
    with pytest.raises(ValueError, match="unhashable dict key"):
        codec.decode(data)
    data = bytes([DICT]) + u32(1) + bytes([LIST]) + u32(1) + bytes([DICT]) + u32(0) + bytes([NONE])
    with pytest.raises(ValueError, match="unhashable dict key"):
        codec.decode(data)


def test_empty_buffer_refused() -> None:
    with pytest.raises(ValueError, match="truncated at byte 0"):
        codec.decode(b"")


# -- properties ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(), st.integers()), inner, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_round_trip_property(value: object) -> None:
    assert codec.decode(codec.encode(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_raises_anything_but_value_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except ValueError:
        pass


@settings(max_examples=100, deadline=None)
@given(values, st.data())
def test_flipped_byte_never_raises_anything_but_value_error(value: object, data: st.DataObject) -> None:
    raw = bytearray(codec.encode(value))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        codec.decode(bytes(raw))
    except ValueError:
        pass
