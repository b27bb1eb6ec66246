"""Bounded capture of a block's output in the kernel process: head and tail, the middle counted.

Why here: a block may print gigabytes; the kernel keeps ``max_output_chars`` of it in bounded memory
and the marker the model reads says how much was dropped.
"""

from __future__ import annotations

from .messages import OMITTED_MARKER

_CONT_BYTES = bytes(range(0x80, 0xC0))  # UTF-8 continuation bytes: not counted as characters


def _count_chars(data: bytes | bytearray | memoryview) -> int:
    """Characters in UTF-8 bytes (continuation bytes are not counted)."""
    raw = bytes(data)
    return len(raw) if raw.isascii() else len(raw.translate(None, _CONT_BYTES))


class _OutputBuffer:
    """Keeps the head and tail of a stream in bounded memory and counts what it drops."""

    def __init__(self, max_chars: int) -> None:
        self.head_chars = max_chars // 2
        self.tail_chars = max_chars - self.head_chars
        self._head_cap = 4 * self.head_chars  # bytes: enough for head_chars of any UTF-8
        self._tail_cap = 4 * self.tail_chars
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped_chars = 0
        self.dropped = False

    def feed(self, data: bytes | memoryview) -> None:
        """Add a chunk of output."""
        data = memoryview(data)
        room = self._head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
            if not data:
                return
        keep = self._tail_cap
        if len(data) >= keep:
            self.dropped_chars += _count_chars(self.tail) + _count_chars(data[: len(data) - keep])
            self.tail = bytearray(data[len(data) - keep :])
            self.dropped = True
            return
        self.tail += data
        excess = len(self.tail) - keep
        if excess > 0:
            self.dropped_chars += _count_chars(self.tail[:excess])
            del self.tail[:excess]
            self.dropped = True

    def text(self) -> str:
        """Head + marker + tail, or everything when it fits."""
        hc, tc = self.head_chars, self.tail_chars
        if not self.dropped:
            full = (self.head + self.tail).decode("utf-8", "replace")
            if len(full) <= hc + tc:
                return full
            head, tail, omitted = full[:hc], full[len(full) - tc :], len(full) - hc - tc
        else:
            h = self.head.decode("utf-8", "replace")
            t = self.tail.decode("utf-8", "replace")
            head, tail = h[:hc], t[len(t) - tc :]
            omitted = self.dropped_chars + (len(h) - hc) + (len(t) - tc)
        return head + OMITTED_MARKER.format(count=omitted) + tail


class _Discard(_OutputBuffer):
    """Output sink for replayed blocks."""

    def __init__(self) -> None:
        super().__init__(2)

    def feed(self, data: bytes | memoryview) -> None:
        """Drop the chunk."""
