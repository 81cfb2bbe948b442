"""The one exception type jmaml raises for bad input, and the checks that raise it."""

import jax


class JmamlError(ValueError):
    """Bad input caught at the edge: a config, a shape, a path or a data set.

    The message says what is wrong and how to fix it, in one line; the command line
    prints it as ``error: <message>`` and exits with status 2.
    """


def check_positive(name: str, value: float | int, *, integer: bool = False) -> None:
    """Raises a JmamlError unless ``value`` is a positive number (or integer).

    A traced value (one run's rate inside :func:`jmaml.core.runs.make_runs_step`) has no value to check
    here; it was checked where it was concrete.
    """
    if isinstance(value, jax.core.Tracer):
        return
    kind = "integer" if integer else "number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0:
        raise JmamlError(f"{name} must be a positive {kind}, got {value!r}")
