"""The one base class of expected failures: what a user did or can fix, not a bug.

Every stage raises a subclass of :class:`ChurnflowError` for input it must refuse (an unknown
account, a bad value, a broken file, a locked warehouse). The CLI prints such an error as one
clear line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ChurnflowError(Exception):
    """An expected failure; its message names what is wrong and what to do."""


class UnknownAccountError(ChurnflowError, LookupError):
    """An account id that the warehouse does not know."""


class InvalidValueError(ChurnflowError, ValueError):
    """A value outside what a command accepts (the message lists the accepted ones)."""
