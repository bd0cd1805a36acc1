"""The one exception type for mistakes a user can fix: run.py prints its sentence, no traceback."""


class QpeftError(Exception):
    """A user-fixable error; the message says which setting to change."""
