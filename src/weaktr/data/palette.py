"""The PASCAL VOC colour map that every label PNG of the project is written with."""

from __future__ import annotations


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (256 RGB entries, flattened), as PNG palettes expect."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette
