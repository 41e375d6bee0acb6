"""Text of a token stream: complete UTF-8 characters only, and stop strings held back until
they can no longer match (so a stop string is never streamed, even split over tokens)."""
from __future__ import annotations


def decode_complete(raw: bytearray, start: int) -> tuple[str, int]:
    """Decode the complete UTF-8 characters of ``raw[start:]`` (a multi-byte char may be split)."""
    end = len(raw)
    for back in range(0, min(4, end - start) + 1):
        try:
            return raw[start:end - back].decode("utf-8"), end - back
        except UnicodeDecodeError:
            continue
    return raw[start:end].decode("utf-8", errors="replace"), end


class StopScanner:
    """Holds back text that may be the start of a stop string; reports a full match."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.hit = False
        self.matched: str | None = None  # the stop string that hit

    def feed(self, piece: str) -> tuple[str, bool]:
        self.buf += piece
        if not self.stops:
            out, self.buf = self.buf, ""
            return out, False
        found = [(i, s) for i, s in ((self.buf.find(s), s) for s in self.stops) if i >= 0]
        if found:
            first, self.matched = min(found)
            out, self.buf, self.hit = self.buf[:first], "", True
            return out, True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        cut = len(self.buf) - keep
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out
