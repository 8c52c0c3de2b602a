"""Small real PNG images made with ``zlib`` and ``struct`` (no imaging library needed)."""

from __future__ import annotations

import random
import struct
import zlib

__all__ = ["gradient_png", "identicon_png", "png", "sniff_image_type"]

Color = tuple[int, int, int]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An 8-bit RGB PNG from ``height`` rows of ``width * 3`` bytes each."""
    if len(rows) != height or any(len(row) != width * 3 for row in rows):
        raise ValueError("rows do not match the image size")
    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def gradient_png(width: int, height: int, top: Color, bottom: Color, *, stripes: int = 0) -> bytes:
    """A vertical gradient from ``top`` to ``bottom``, optionally with diagonal stripes."""
    rows = []
    for y in range(height):
        t = y / max(1, height - 1)
        color = bytes(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        if not stripes:
            rows.append(color * width)
            continue
        light = bytes(min(255, c + 40) for c in color)
        band = max(1, width // (stripes * 2))
        rows.append(b"".join(light if ((x + y) // band) % 2 else color for x in range(width)))
    return png(width, height, rows)


def identicon_png(salt: int, size: int = 64) -> bytes:
    """A GitHub-style 5x5 symmetric identicon, ``size`` pixels square; ``salt`` picks the
    pattern and colour (the same salt, the same picture)."""
    rng = random.Random(salt)
    fg = (rng.randint(40, 200), rng.randint(40, 200), rng.randint(40, 200))
    bg = (240, 240, 240)
    cells = [[rng.random() < 0.5 for _ in range(3)] for _ in range(5)]
    grid = [row + row[1::-1] for row in cells]  # mirror columns 0,1 -> 3,4
    cell = max(1, size // 6)
    margin = (size - cell * 5) // 2
    rows = []
    for y in range(size):
        gy = (y - margin) // cell
        row = bytearray()
        for x in range(size):
            gx = (x - margin) // cell
            on = 0 <= gx < 5 and 0 <= gy < 5 and y >= margin and x >= margin and grid[gy][gx]
            row += bytes(fg if on else bg)
        rows.append(bytes(row))
    return png(size, size, rows)


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG, GIF or WebP bytes; ``None`` for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
