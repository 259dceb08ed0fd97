"""Text from the database or the network, made safe to print on a terminal.

Tenant names, ``sync_log`` errors and server messages are data, not formatting: a name like
``[bold red]Evil[/bold red]`` must print as written (rich would read it as markup), and an
escape sequence in a name (``\\x1b[31m``, a cursor move, a title change, a bidi override) must
never reach the terminal raw. :func:`terminal_safe` shows control characters as ``\\xNN`` /
``\\uNNNN``; :func:`markup_safe` does that and escapes rich markup, for text interpolated into a
message that is printed through rich.
"""

from __future__ import annotations

import unicodedata

from rich.markup import escape

#: Invisible characters that reorder or hide text ("Trojan Source"), shown escaped too.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character (C0, DEL, C1) and bidi control shown escaped.

    ``keep_newlines`` keeps ``\\n`` and ``\\t`` (for multi-line messages of our own).
    """
    if text.isprintable() and not _BIDI.intersection(text):
        return text  # the common case: nothing to do
    kept = "\n\t" if keep_newlines else ""
    return "".join(
        char
        if char in kept or (char not in _BIDI and unicodedata.category(char) != "Cc")
        else _visible(char)
        for char in text
    )


def markup_safe(value: object) -> str:
    """``str(value)`` made terminal-safe and with rich markup escaped (prints as written)."""
    return escape(terminal_safe(str(value)))


__all__ = ["markup_safe", "terminal_safe"]
