"""User-facing errors: one line that says what went wrong and what to do."""


class SymphonyError(Exception):
    """An error caused by input or environment, reported to the user as one line (no traceback)."""
