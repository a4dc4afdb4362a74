"""Names as people wrote them: RFC 2047 encoded words (`=?utf-8?q?M=C3=BCller?=`), which
exports from mail systems and some CRMs leave in name fields, are decoded before a name is
stored or shown in a Subject."""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.header import decode_header, make_header

_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def decode_encoded_words(value: str) -> str:
    """`value` with its RFC 2047 encoded words decoded; unchanged when it has none or they
    cannot be decoded (an unknown charset, a broken base64)."""
    if "=?" not in value or not _ENCODED_WORD.search(value):
        return value
    try:
        decoded = str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeDecodeError, ValueError):
        return value
    return " ".join(decoded.split())
