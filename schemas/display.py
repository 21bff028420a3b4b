"""Text that came from the bus, made safe to print and to log.

Registry fields, message types, senders and dead-letter reasons are written by whoever holds a
credential. Printed raw, an escape sequence (``ESC [ 2 J``, a hyperlink, a title change) acts on
the operator's terminal and a newline forges a log line. ``safe_text`` escapes every control
character (C0, DEL, C1), the Unicode line and paragraph separators and the bidirectional
overrides as ``\\xNN`` / ``\\uNNNN``, and shortens what is too long. Rich markup is a separate
matter: the CLI prints data with ``markup=False`` or escapes it (``rich.markup.escape``).
"""

from __future__ import annotations

__all__ = ["safe_text"]

_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A)) | {0x200E, 0x200F}
_SEPARATORS = frozenset({0x2028, 0x2029, 0x0085})


def _unsafe(code: int) -> bool:
    return code < 0x20 or 0x7F <= code <= 0x9F or code in _SEPARATORS or code in _BIDI


def safe_text(value: object, limit: int = 1000) -> str:
    """``value`` as one printable line: control characters escaped, at most ``limit``
    characters (then ``…``)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    if not any(_unsafe(ord(c)) for c in text):
        return text
    out = []
    for c in text:
        code = ord(c)
        if not _unsafe(code):
            out.append(c)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)
