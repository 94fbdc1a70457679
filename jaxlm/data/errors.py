"""The data layer's error type (its own module so that every data module can raise it without import cycles)."""


class DataError(ValueError):
    """Bad data input (missing/empty file, missing column, vocabulary mismatch); the message names the fix."""
