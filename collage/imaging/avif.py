"""Read the crop an AVIF file asks for (its clean aperture), which Pillow's decoder ignores.

Pillow 13 applies an AVIF's rotation and mirror (`irot`, `imir`: it turns them into the EXIF
orientation that decoding.py applies after any crop, the order MIAF prescribes) but not its
clean aperture (`clap`), the rectangle an encoder records when it coded more pixels than the
picture has. The boxes are ISOBMFF's: the primary item's properties are in meta > iprp > ipco,
associated with items by meta > iprp > ipma; a sequence's are in its track's sample entry.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from fractions import Fraction

Box = tuple[bytes, int, int]  # type, where its body starts, where it ends
_CLAP = struct.Struct(">IIIIiIiI")  # width N/D, height N/D, horizontal offset N/D, vertical N/D
# A VisualSampleEntry's fixed fields, before its child boxes (ISO 14496-12, 12.1.3).
_VISUAL_SAMPLE_ENTRY = 78
# libavif has parsed the file, but a hostile one could still hold millions of tiny boxes or
# associations for this loop in Python to walk: real files have a handful (a grid, hundreds),
# and a property index has 15 bits at most.
_MOST = 1 << 15


def clean_aperture(data: bytes, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Return the box (left, top, right, bottom) a browser crops the coded image to, or None.

    `size` is the coded image's, before rotation. A clean aperture that is not a whole-pixel
    rectangle inside the image is ignored and the whole image shown, as libavif's users do; so
    are malformed boxes (libavif decoded the file). Chromium also shows the whole image when
    the rectangle does not start at the top-left corner (to discourage files that hide
    content); we crop those too, as the file asks, as Android does: a collage must not show
    what the photo's author cropped away.
    """
    try:
        clap = _clap(data)
    except (IndexError, ValueError, struct.error):
        return None
    if clap is None:
        return None
    width_n, width_d, height_n, height_d, x_n, x_d, y_n, y_d = _CLAP.unpack(clap)
    if 0 in (width_d, height_d, x_d, y_d):
        return None
    full_width, full_height = size
    width, height = Fraction(width_n, width_d), Fraction(height_n, height_d)
    # The aperture's centre is offset from the image's: pcX = horizOff + (width - 1) / 2.
    left = Fraction(x_n, x_d) + (full_width - width) / 2
    top = Fraction(y_n, y_d) + (full_height - height) / 2
    if any(v.denominator != 1 for v in (width, height, left, top)) or width < 1 or height < 1:
        return None
    if left < 0 or top < 0 or left + width > full_width or top + height > full_height:
        return None
    if width == full_width and height == full_height:
        return None
    return int(left), int(top), int(left + width), int(top + height)


def _boxes(data: bytes, start: int, end: int) -> Iterator[Box]:
    """Yield the first boxes between start and end; stop at the first one that does not fit."""
    at = start
    for _ in range(_MOST):
        if at + 8 > end:
            return
        size, kind, body = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8], at + 8
        if size == 1:  # a 64-bit size follows the type
            size, body = int.from_bytes(data[body : body + 8], "big"), body + 8
        elif size == 0:  # to the end of the enclosing box
            size = end - at
        if size < body - at or at + size > end:
            return
        yield kind, body, at + size
        at += size


def _child(data: bytes, parent: Box | None, kind: bytes, skip: int = 0) -> Box | None:
    """Return the first box of that type inside parent's body (past `skip` bytes), or None."""
    if parent is None:
        return None
    return next((box for box in _boxes(data, parent[1] + skip, parent[2]) if box[0] == kind), None)


def _clap(data: bytes) -> bytes | None:
    """Return the body of the clap box of the image libavif shows, or None."""
    top = {
        kind: (kind, start, end) for kind, start, end in reversed(list(_boxes(data, 0, len(data))))
    }
    ftyp = top.get(b"ftyp")
    major = data[ftyp[1] : ftyp[1] + 4] if ftyp else b""
    # libavif's choice: the item unless the major brand is not 'avif' and a track exists.
    if major != b"avif" and (entry := _colour_track_entry(data, top.get(b"moov"))) is not None:
        clap = _child(data, entry, b"clap", _VISUAL_SAMPLE_ENTRY)
    else:
        clap = _primary_item_clap(data, top.get(b"meta"))
    if clap is None or clap[2] - clap[1] < _CLAP.size:
        return None
    return data[clap[1] : clap[1] + _CLAP.size]


def _primary_item_clap(data: bytes, meta: Box | None) -> Box | None:
    """Find the clap property associated with the primary item."""
    pitm, iprp = _child(data, meta, b"pitm", 4), _child(data, meta, b"iprp", 4)
    ipco = _child(data, iprp, b"ipco")
    if pitm is None or iprp is None or ipco is None:
        return None
    version, at = data[pitm[1]], pitm[1] + 4
    primary = int.from_bytes(data[at : at + (2 if version == 0 else 4)], "big")
    properties = list(_boxes(data, ipco[1], ipco[2]))  # numbered from 1 by the associations
    for item, index in _associations(data, iprp):
        if (
            item == primary
            and 1 <= index <= len(properties)
            and properties[index - 1][0] == b"clap"
        ):
            return properties[index - 1]
    return None


def _associations(data: bytes, iprp: Box) -> Iterator[tuple[int, int]]:
    """Yield (item ID, property index) of every association in the ipma boxes."""
    for kind, start, end in _boxes(data, iprp[1], iprp[2]):
        if kind != b"ipma":
            continue
        id_size = 2 if data[start] == 0 else 4  # version 0: 16-bit item IDs
        index_size, mask = (
            (2, 0x7FFF) if data[start + 3] & 1 else (1, 0x7F)
        )  # flags; 1 bit essential
        count, at = int.from_bytes(data[start + 4 : start + 8], "big"), start + 8
        for _ in range(min(count, _MOST)):
            item = int.from_bytes(data[at : at + id_size], "big")
            associations, at = data[at + id_size], at + id_size + 1
            if at + associations * index_size > end:
                return
            for _ in range(associations):
                yield item, int.from_bytes(data[at : at + index_size], "big") & mask
                at += index_size


def _colour_track_entry(data: bytes, moov: Box | None) -> Box | None:
    """Return the av01 sample entry of the first track that is not an alpha (auxl) track."""
    for trak in _boxes(data, moov[1], moov[2]) if moov else ():
        if trak[0] != b"trak" or _child(data, _child(data, trak, b"tref"), b"auxl") is not None:
            continue
        stbl = _child(data, _child(data, _child(data, trak, b"mdia"), b"minf"), b"stbl")
        stsd = _child(data, stbl, b"stsd")
        entry = _child(data, stsd, b"av01", 8)  # past version, flags and entry_count
        if entry is not None:
            return entry
    return None
