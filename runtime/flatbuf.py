"""A minimal read-only FlatBuffers reader: enough to read a TFLite model's tensors, operators and
metadata without TensorFlow or the flatbuffers package (the runtime installs neither).

Every offset is checked against the buffer, so a damaged or hostile file raises FlatBufferError
instead of reading out of bounds or looping.
"""

from __future__ import annotations

import struct


class FlatBufferError(ValueError):
    """Bytes that are not a well-formed FlatBuffer (truncated, or an offset pointing outside)."""


class Table:
    """One table of a FlatBuffer; fields are read by their index in the schema (0, 1, 2, ...)."""

    __slots__ = ("buf", "pos", "_vtable", "_vtable_size")

    def __init__(self, buf: bytes | memoryview, pos: int):
        self.buf = buf
        self.pos = _check(buf, pos, 4)
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        _check(buf, vtable, 4)
        self._vtable = vtable
        self._vtable_size = struct.unpack_from("<H", buf, vtable)[0]
        _check(buf, vtable, self._vtable_size)

    @classmethod
    def root(cls, buf: bytes | memoryview, identifier: bytes | None = None) -> "Table":
        if len(buf) < 8:
            raise FlatBufferError(f"{len(buf)} bytes is too short for a FlatBuffer")
        if identifier is not None and bytes(buf[4:8]) != identifier:
            raise FlatBufferError(f"file identifier is {bytes(buf[4:8])!r}, expected {identifier!r}")
        return cls(buf, struct.unpack_from("<I", buf, 0)[0])

    def _field(self, index: int) -> int:
        """Absolute position of field `index`, or 0 when the field is absent (its default applies)."""
        entry = 4 + 2 * index
        if entry + 2 > self._vtable_size:
            return 0
        offset = struct.unpack_from("<H", self.buf, self._vtable + entry)[0]
        return self.pos + offset if offset else 0

    def scalar(self, index: int, fmt: str, default=0):
        at = self._field(index)
        if not at:
            return default
        _check(self.buf, at, struct.calcsize(fmt))
        return struct.unpack_from("<" + fmt, self.buf, at)[0]

    def _target(self, index: int) -> int:
        at = self._field(index)
        if not at:
            return 0
        _check(self.buf, at, 4)
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, index: int) -> "Table | None":
        target = self._target(index)
        return Table(self.buf, target) if target else None

    def string(self, index: int) -> str | None:
        target = self._target(index)
        if not target:
            return None
        return bytes(_vector_bytes(self.buf, target, 1)).decode("utf-8", "replace")

    def bytes(self, index: int) -> memoryview:
        target = self._target(index)
        return memoryview(self.buf)[0:0] if not target else _vector_bytes(self.buf, target, 1)

    def scalars(self, index: int, fmt: str) -> list:
        target = self._target(index)
        if not target:
            return []
        size = struct.calcsize(fmt)
        data = _vector_bytes(self.buf, target, size)
        return list(struct.unpack_from(f"<{len(data) // size}{fmt}", data, 0))

    def tables(self, index: int) -> list["Table"]:
        return [Table(self.buf, at) for at in self._elements(index)]

    def strings(self, index: int) -> list[str]:
        return [bytes(_vector_bytes(self.buf, at, 1)).decode("utf-8", "replace") for at in self._elements(index)]

    def _elements(self, index: int) -> list[int]:
        """Positions of the tables or strings a vector of offsets points at."""
        target = self._target(index)
        if not target:
            return []
        count = len(_vector_bytes(self.buf, target, 4)) // 4
        elements = (target + 4 + 4 * i for i in range(count))
        return [at + struct.unpack_from("<I", self.buf, at)[0] for at in elements]


def _check(buf, pos: int, size: int) -> int:
    if pos < 0 or pos + size > len(buf):
        raise FlatBufferError(f"offset {pos} (+{size} bytes) is outside the {len(buf)}-byte buffer: truncated or damaged")
    return pos


def _vector_bytes(buf, pos: int, element_size: int) -> memoryview:
    _check(buf, pos, 4)
    count = struct.unpack_from("<I", buf, pos)[0]
    _check(buf, pos + 4, count * element_size)
    return memoryview(buf)[pos + 4 : pos + 4 + count * element_size]
