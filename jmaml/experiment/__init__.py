"""The experiment application on top of the jmaml library.

Named configs (the only reader of a config), workloads built from them, the host training
loop, run folders, orbax checkpoints and the ``jmaml`` command. Nothing in the library
(``jmaml.core``, ``jmaml.algorithms``, ``jmaml.models``, ``jmaml.data``, ``jmaml.evaluation``)
imports this package.
"""
