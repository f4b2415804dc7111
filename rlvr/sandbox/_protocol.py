"""The sandbox's messages: length-prefixed JSON frames (never pickle: one side is untrusted).

Standard library only; the zygote loads this file by path (see `server.py`).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import time

FRAME_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 << 20


def encode_frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return FRAME_HEADER.pack(len(body)) + body


class FrameReader:
    """Accumulates bytes and splits them into JSON frames."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES):
        self.buf = bytearray()
        self.max_bytes = max_bytes

    def feed(self, data: bytes) -> None:
        self.buf += data

    def pop(self) -> object | None:
        if len(self.buf) < FRAME_HEADER.size:
            return None
        (n,) = FRAME_HEADER.unpack_from(self.buf)
        if n > self.max_bytes:
            raise ValueError(f"frame of {n} bytes exceeds the {self.max_bytes}-byte limit")
        if len(self.buf) < FRAME_HEADER.size + n:
            return None
        body = bytes(self.buf[FRAME_HEADER.size:FRAME_HEADER.size + n])
        del self.buf[:FRAME_HEADER.size + n]
        return json.loads(body)


def recv_frame(sock: socket.socket, reader: FrameReader, deadline: float | None) -> object | None:
    """The next frame from a stream socket; None at end of stream; TimeoutError at ``deadline``."""
    while True:
        obj = reader.pop()
        if obj is not None:
            return obj
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                raise TimeoutError("no answer before the deadline")
        data = sock.recv(1 << 16)
        if not data:
            return None
        reader.feed(data)


def _safe_relpath(name: str) -> str:
    norm = os.path.normpath(name)
    if not name or os.path.isabs(name) or norm.startswith("..") or norm == "." or "\0" in name:
        raise ValueError(f"file name {name!r} must be a relative path inside the scratch directory")
    return norm
