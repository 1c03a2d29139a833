"""Text from rows, shown safely: to a terminal, a log line, or an operator's message.

A row's brand, external_id or URL may hold anything, including the escape sequences that
rewrite a terminal's title or the bidirectional marks that reverse how a line reads.
"""

from __future__ import annotations

import unicodedata

# Control (Cc), format (Cf: U+202E and the other bidi marks, zero-width ones), line and
# paragraph separators (Zl, Zp), surrogates, private-use and unassigned code points: none
# belongs in a name, a key or a line meant for people.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# The longest value shown whole; a 2 MB URL is cut, saying by how much.
SHOWN_CHARS = 300


def unsafe(text: str) -> bool:
    """Whether `text` holds a character that could change how it, or what follows, reads."""
    # Every unsafe category is non-printable: most text is settled at C speed.
    return not text.isprintable() and any(
        unicodedata.category(c) in UNSAFE_CATEGORIES for c in text
    )


def escaped(text: str) -> str:
    """Every unsafe character as a visible escape (\\x1b, \\u202e), the rest as it is."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii")
        if unicodedata.category(c) in UNSAFE_CATEGORIES
        else c
        for c in text
    )


def printable(text: str) -> str:
    """One line: whitespace collapsed, unsafe characters escaped."""
    return escaped(" ".join(text.split()))


def shown(text: str, *, limit: int = SHOWN_CHARS) -> str:
    """A value from a row as one safe line, spaces kept as they are, cut after `limit` characters.

    Only what is shown is escaped: a 2 MB URL costs its first `limit` characters.
    """
    if len(text) <= limit:
        return escaped(text)
    return f"{escaped(text[:limit])}... ({len(text) - limit:,} more characters)"


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying it was."""
    if len(text) <= limit:
        return text
    tail = f"... ({len(text) - limit:,} more characters)"
    return text[: max(0, limit - len(tail))] + tail


def whole_number(text: str, *, max_digits: int = 18) -> int | None:
    """`text` as a whole number if it is one in ASCII digits ('²' and '٣' are digits too)."""
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None
