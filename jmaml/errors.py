"""The one exception type jmaml raises for bad input, and the checks that raise it."""


class JmamlError(ValueError):
    """Bad input caught at the edge: a config, a shape, a path or a data set.

    The message says what is wrong and how to fix it, in one line; the command line
    prints it as ``error: <message>`` and exits with status 2.
    """


def check_positive(name: str, value: float | int, *, integer: bool = False) -> None:
    """Raises a JmamlError unless ``value`` is a positive number (or integer)."""
    kind = "integer" if integer else "number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0:
        raise JmamlError(f"{name} must be a positive {kind}, got {value!r}")
