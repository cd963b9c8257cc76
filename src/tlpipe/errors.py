"""The one exception type for mistakes a user can fix (bad params, bad data),
and the one wording of a bad params value.

Stage scripts print these as a single line and exit with status 2; anything
else is a bug and keeps its traceback.
"""

import reprlib
from typing import Any

from tlpipe.paths import PARAMS

# A value as a message shows it: bounded in depth, items and characters, so a
# YAML alias bomb (a few lines that expand to billions of items) is refused
# at once instead of being printed for minutes.
_SHORT = reprlib.Repr()  # (Python 3.11's takes no keyword arguments)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 3, 8, 8, 8, 8
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40
EXCERPT_CHARS = 200


class TlpipeError(Exception):
    """A user-facing error: the message names the file or key, the bad value
    and what would be valid."""


def excerpt(value: Any) -> str:
    """``repr(value)``, bounded: never more than EXCERPT_CHARS characters, in
    time that does not grow with the value's size."""
    text = _SHORT.repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def invalid(key: str, rule: str, value: Any, hint: str = "", source: str = str(PARAMS)) -> TlpipeError:
    """A bad params value, worded as scikit-learn words it, by every check
    wherever it lives (params, freeze, backbones, data_source)."""
    return TlpipeError(
        f"{source}: The '{key}' parameter must be {rule}. Got {excerpt(value)} instead.{' ' + hint if hint else ''}"
    )
