"""The one exception type jmaml raises for bad input."""


class JmamlError(ValueError):
    """Bad input caught at the edge: a config, a shape, a path or a data set.

    The message says what is wrong and how to fix it, in one line; the command line
    prints it as ``error: <message>`` and exits with status 2.
    """
