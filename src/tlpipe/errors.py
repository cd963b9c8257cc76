"""The one exception type for mistakes a user can fix (bad params, bad data).

Stage scripts print these as a single line and exit with status 2; anything
else is a bug and keeps its traceback.
"""


class TlpipeError(Exception):
    """A user-facing error: the message names the file or key, the bad value
    and what would be valid."""
