"""The one exception type for mistakes a user can fix (bad params, bad data),
and the one wording of a bad params value.

Stage scripts print these as a single line and exit with status 2; anything
else is a bug and keeps its traceback.
"""

from typing import Any

from tlpipe.paths import PARAMS


class TlpipeError(Exception):
    """A user-facing error: the message names the file or key, the bad value
    and what would be valid."""


def invalid(key: str, rule: str, value: Any, hint: str = "", source: str = str(PARAMS)) -> TlpipeError:
    """A bad params value, worded as scikit-learn words it, by every check
    wherever it lives (params, freeze, backbones, data_source)."""
    return TlpipeError(
        f"{source}: The '{key}' parameter must be {rule}. Got {value!r} instead.{' ' + hint if hint else ''}"
    )
