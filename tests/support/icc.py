"""Colour science written out, and ICC profiles built byte by byte (ICC.1:2001-04, version 2).

So that the colour tests check ImageCms against the maths, with profiles no one may object to
committing.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence

D50 = (0.9642, 1.0, 0.8249)


D65_XY = (0.3127, 0.3290)


SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))


ADOBE_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))


P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))


BRADFORD = ((0.8951, 0.2664, -0.1614), (-0.7502, 1.7135, 0.0367), (0.0389, -0.0685, 1.0296))


Matrix = tuple[tuple[float, ...], ...]


def mul(a: Matrix, b: Matrix) -> Matrix:
    """Multiply two 3x3 matrices."""
    return tuple(
        tuple(sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)) for i in range(3)
    )


def apply(m: Matrix, v: Sequence[float]) -> tuple[float, ...]:
    """Multiply a 3x3 matrix by a vector."""
    return tuple(sum(m[i][k] * v[k] for k in range(3)) for i in range(3))


def inverse(m: Matrix) -> Matrix:
    """Invert a 3x3 matrix."""
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    cof = ((e * i - f * h, c * h - b * i, b * f - c * e),
           (f * g - d * i, a * i - c * g, c * d - a * f),
           (d * h - e * g, b * g - a * h, a * e - b * d))  # fmt: skip
    return tuple(tuple(x / det for x in row) for row in cof)


def xyz_of(xy: tuple[float, float]) -> tuple[float, float, float]:
    """Return the XYZ of a chromaticity at Y = 1."""
    x, y = xy
    return (x / y, 1.0, (1 - x - y) / y)


def rgb_to_xyz(primaries: Sequence[tuple[float, float]]) -> Matrix:
    """Return the matrix from linear RGB to XYZ, white D65 at Y = 1."""
    columns = tuple(tuple(xyz_of(p)[i] for p in primaries) for i in range(3))
    scale = apply(inverse(columns), xyz_of(D65_XY))
    return tuple(tuple(columns[i][j] * scale[j] for j in range(3)) for i in range(3))


def d65_to_d50() -> Matrix:
    """Return Bradford's chromatic adaptation from D65 to D50, as ICC profiles store colorants."""
    cone_src, cone_dst = apply(BRADFORD, xyz_of(D65_XY)), apply(BRADFORD, D50)
    scale = tuple(
        tuple(cone_dst[i] / cone_src[i] if i == j else 0.0 for j in range(3)) for i in range(3)
    )
    return mul(inverse(BRADFORD), mul(scale, BRADFORD))


def srgb_encode(linear: Sequence[float]) -> tuple[float, ...]:
    """Apply sRGB's transfer curve to linear values, clipped, on a 0-255 scale."""
    out = []
    for v in linear:
        v = min(1.0, max(0.0, v))
        out.append(255 * (12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055))
    return tuple(out)


def srgb_decode(value: int) -> float:
    """Undo sRGB's transfer curve (also Display P3's)."""
    v = value / 255
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def to_srgb(primaries: Sequence[tuple[float, float]], linear: Sequence[float]) -> tuple[float, ...]:
    """Convert linear RGB in other primaries (same D65 white) to 8-bit sRGB."""
    matrix = mul(inverse(rgb_to_xyz(SRGB_PRIMARIES)), rgb_to_xyz(primaries))
    return srgb_encode(apply(matrix, linear))


def lab_to_srgb(lab: tuple[float, float, float]) -> tuple[float, ...]:
    """Convert CIELAB (D50, as ICC's PCS) to 8-bit sRGB."""
    lightness, a, b = lab
    fy = (lightness + 16) / 116
    finv = [
        t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)
        for t in (fy + a / 500, fy, fy - b / 200)
    ]
    xyz = tuple(n * f for n, f in zip(D50, finv, strict=True))
    return srgb_encode(apply(inverse(mul(d65_to_d50(), rgb_to_xyz(SRGB_PRIMARIES))), xyz))


def s15(value: float) -> bytes:
    """Encode an s15Fixed16Number."""
    return struct.pack(">i", round(value * 65536))


def xyz_tag(xyz: Sequence[float]) -> bytes:
    """Encode an XYZType."""
    return b"XYZ \0\0\0\0" + b"".join(map(s15, xyz))


def gamma_tag(gamma: float) -> bytes:
    """Encode a curveType holding a single gamma."""
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))


def srgb_curve_tag() -> bytes:
    """Encode sRGB's transfer curve as a parametricCurveType (function 3), as Display P3 has."""
    params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(map(s15, params))


def icc(device: bytes, space: bytes, pcs: bytes, name: str, tags: dict[bytes, bytes]) -> bytes:
    """Assemble a version 2 ICC profile from its tags."""
    text = name.encode() + b"\0"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + bytes(8 + 3 + 67),
        b"wtpt": xyz_tag(D50),
        **tags,
    }
    table, data, start = b"", b"", 128 + 4 + 12 * len(tags)
    for signature, body in tags.items():
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    header = (
        struct.pack(">I4sI4s4s4s", start + len(data), b"", 0x02100000, device, space, pcs)
        + bytes(12) + b"acsp" + bytes(28) + b"".join(map(s15, D50)) + bytes(48)
    )  # fmt: skip
    return header + struct.pack(">I", len(tags)) + table + data


def rgb_profile(name: str, primaries: Sequence[tuple[float, float]], curve: bytes) -> bytes:
    """Build a matrix/TRC display profile, colorants adapted to D50 as the ICC requires."""
    colorants = mul(d65_to_d50(), rgb_to_xyz(primaries))
    columns = {
        sig: xyz_tag([row[i] for row in colorants])
        for i, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))
    }
    return icc(
        b"mntr", b"RGB ", b"XYZ ", name, {**columns, b"rTRC": curve, b"gTRC": curve, b"bTRC": curve}
    )


ADOBE_RGB = rgb_profile("Adobe RGB (1998)", ADOBE_PRIMARIES, gamma_tag(563 / 256))


DISPLAY_P3 = rgb_profile("Display P3", P3_PRIMARIES, srgb_curve_tag())


LINEAR_GREY = icc(b"mntr", b"GRAY", b"XYZ ", "Linear grey", {b"kTRC": gamma_tag(1.0)})


def cmyk_lab(c: int, m: int, y: int, k: int) -> tuple[float, float, float]:
    """Say where the test CMYK profile puts each corner of its grid (0 or 1 per ink)."""
    if (c, m, y, k) == (1, 0, 0, 0):
        return (50.0, 60.0, 40.0)  # cyan ink printing red: only a profile can make that happen
    return (100 * (1 - 0.25 * (c + m + y)) * (1 - 0.8 * k), 0.0, 0.0)


def cmyk_profile() -> bytes:
    """Build a CMYK output profile whose A2B0 is a 2-point lut8 grid over the four inks."""
    body = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + b"".join(map(s15, (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    body += bytes(range(256)) * 4
    for corner in itertools.product((0, 1), repeat=4):  # the first ink varies slowest
        lightness, a, b = cmyk_lab(*corner)
        body += bytes([round(lightness * 255 / 100), round(a + 128), round(b + 128)])
    body += bytes(range(256)) * 3
    return icc(b"prtr", b"CMYK", b"Lab ", "Test CMYK", {b"A2B0": body})
