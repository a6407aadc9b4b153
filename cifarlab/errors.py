"""The one exception type users see: the CLI prints its message and exits with status 2."""


class CifarlabError(Exception):
    """A problem the user can fix (bad path, corrupt file, unknown name, bad value, NaN loss).

    The message says what went wrong and what to do; no traceback is shown for it.
    """
