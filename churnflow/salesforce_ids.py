"""Salesforce record ids: the 18-character case-safe form and its checksum.

Salesforce accepts 15- and 18-character ids but always returns 18; comparing ids from the
warehouse (often 15) with ids from the API (18) only works after normalising both.
"""

from __future__ import annotations

import re

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
ID_RE = re.compile(r"^[a-zA-Z0-9]{15}(?:[A-Z0-5]{3})?$")

#: Key prefixes of the objects churnflow touches.
PREFIXES = {"Account": "001", "User": "005", "Task": "00T"}


def id_suffix(id15: str) -> str:
    """Salesforce's 3-character case-safety checksum of a 15-character id."""
    out = ""
    for chunk in range(3):
        bits = 0
        for pos, ch in enumerate(id15[chunk * 5:chunk * 5 + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << pos
        out += _SUFFIX[bits]
    return out


def to_id18(value: object) -> str | None:
    """The 18-character form of a 15- or 18-character id, or None when it is not a valid id."""
    if not isinstance(value, str) or not ID_RE.match(value):
        return None
    if len(value) == 18:
        return value if id_suffix(value[:15]) == value[15:] else None
    return value + id_suffix(value)


def make_id(prefix: str, number: int) -> str:
    """A new 18-character id: key prefix, a fixed pod/instance part, and a base-62 number."""
    digits = ""
    while number:
        number, rem = divmod(number, 62)
        digits = _B62[rem] + digits
    id15 = prefix + "8c0" + digits.rjust(9, "0")
    return id15 + id_suffix(id15)
