"""TensorBoard scalar logs written without TensorFlow.

Keras' TensorBoard callback needs TensorFlow, which the JAX/PyTorch training machines do not have. An
event file is only a TFRecord stream of small `Event` protobufs, so this module writes the scalars
itself (standard library only) and TensorBoard reads them under every backend:

    record = uint64 length | uint32 masked crc32c(length) | Event bytes | uint32 masked crc32c(bytes)
    Event  = wall_time (1, double) | step (2, int64) | file_version (3) or summary (5)
    Summary.Value = tag (1, string) | simple_value (2, float)
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

_CRC32C_POLY = 0x82F63B78  # Castagnoli, bit-reversed: what TFRecord framing uses


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _event(wall_time: float, step: int = 0, *, file_version: str | None = None,
           scalars: dict[str, float] | None = None) -> bytes:
    body = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        body += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", float(value)))
            for tag, value in scalars.items()
        )
        body += _field_bytes(5, values)
    return body


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class ScalarWriter:
    """Appends scalar summaries to one event file in `folder` (created), flushed after every write so
    a live TensorBoard and a killed run both see every finished epoch."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        # TensorBoard finds files by the "tfevents" in their name; a new file per writer keeps a
        # resumed run's events apart from the killed process's (TensorBoard merges them by step).
        self.path = self.folder / f"events.out.tfevents.{now:.6f}.{socket.gethostname()}.{os.getpid()}"
        with open(self.path, "wb") as handle:
            handle.write(_record(_event(now, file_version="brain.Event:2")))

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        with open(self.path, "ab") as handle:
            handle.write(_record(_event(time.time(), step, scalars=scalars)))
