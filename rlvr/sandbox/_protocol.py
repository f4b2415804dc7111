"""The sandbox's messages (JSON, never pickle: one side is untrusted).

* parent <-> supervisor (both trusted): length-prefixed JSON frames on a stream socket.
* supervisor -> executor: the same frames, cut into `CHUNK_BYTES` messages of a
  SOCK_SEQPACKET socket (the control channel), sent without blocking (`Outbox`).
* executor -> supervisor: one JSON object per message, at most `MESSAGE_BYTES`; no length
  prefix to believe, and a message cannot run into the next one. The untrusted code can
  write to this channel too: the supervisor parses a bounded number of messages per call
  and takes nothing from them but what the protocol allows at that point (see `_zygote.py`).

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
MESSAGE_BYTES = 4096   # largest executor -> supervisor message; longer ones are dropped
CHUNK_BYTES = 32768    # supervisor -> executor messages (the executor reads 64 KiB at a time)


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


class Outbox:
    """Bytes waiting to go to a peer that may never read them: sent in chunks, never blocking."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def put(self, data: bytes) -> None:
        self.pending += data

    def send_some(self, sock: socket.socket) -> None:
        """Send what the socket takes now; a peer that is gone drops the rest."""
        while self.pending:
            try:
                n = sock.send(self.pending[:CHUNK_BYTES], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.pending.clear()
                return
            del self.pending[:n]


def send_message(sock: socket.socket, obj: object) -> None:
    """One executor -> supervisor message (blocking: the executor is the only one waiting)."""
    data = json.dumps(obj).encode()
    sock.sendall(data[:MESSAGE_BYTES])


def _safe_relpath(name: str) -> str:
    norm = os.path.normpath(name)
    if not name or os.path.isabs(name) or norm.startswith("..") or norm == "." or "\0" in name:
        raise ValueError(f"file name {name!r} must be a relative path inside the scratch directory")
    return norm
