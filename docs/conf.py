"""Sphinx configuration of the jmaml documentation.

Build (warnings are errors, as in CI)::

    pip install -e '.[docs]'
    sphinx-build -W --keep-going -b html docs docs/_build/html

Notebooks: ``examples/*.ipynb`` are read through the ``docs/examples`` symlink (Sphinx reads only its
source folder) by myst-nb, which renders the committed outputs without running anything
(``nb_execution_mode = "off"``); ``tests/test_notebooks.py`` is what runs them.
"""

import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # document this checkout's jmaml, not an installed copy

import jmaml  # noqa: E402

project = "jmaml"
author = "the jmaml authors"
copyright = "the jmaml authors, Apache-2.0"  # noqa: A001  (Sphinx's name)
version = release = jmaml.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
nb_execution_mode = "off"  # show the outputs committed with each notebook, from its full run
templates_path: list[str] = []

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" as fields of the class, not as separate objects: a NamedTuple's fields would
# otherwise be described twice (once by the docstring, once by autodoc).
napoleon_use_ivar = True

autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": False}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_theme_options = {"description": "MAML-family meta-learning in JAX", "fixed_sidebar": True}


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leave out the ``Alias for field number N`` properties of NamedTuples (their docstrings say more)."""
    doc = getattr(obj, "__doc__", None) or ""
    if isinstance(obj, property) and doc.startswith("Alias for field number"):
        return True
    return skip


def _cells(row: str) -> list[str]:
    """The cells of a pipe-table row; a ``|`` inside a double-backtick literal stays in its cell."""
    body = row.strip()
    body = body[1:-1] if body.endswith("|") else body[1:]
    cells = [""]
    for i, part in enumerate(re.split(r"(``.*?``)", body)):  # literals at odd positions
        if i % 2:
            cells[-1] += part
        else:
            first, *rest = part.split("|")
            cells[-1] += first
            cells += rest
    return [c.strip() for c in cells]


def _markdown_tables(app, what, name, obj, options, lines):
    """Turn Markdown pipe tables in docstrings (``| a | b |`` then ``|---|---|``) into list-tables.

    Docstrings are read as plain text in editors and ``help()``, where a pipe table reads best
    (``jmaml.algorithms`` has one); reStructuredText would take its bars for substitutions.
    """
    out, i = [], 0
    while i < len(lines):
        row = lines[i].strip()
        rule = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if row.startswith("|") and rule.startswith("|") and set(rule) <= set("|-: "):
            indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
            table = [row]
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                table.append(lines[i].strip())
                i += 1
            out += ["", f"{indent}.. list-table::", f"{indent}   :header-rows: 1", ""]
            for cells in map(_cells, table):
                out += [f"{indent}   * - {cells[0]}"] + [f"{indent}     - {c}" for c in cells[1:]]
            out.append("")
        else:
            out.append(lines[i])
            i += 1
    lines[:] = out


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("autodoc-process-docstring", _markdown_tables)
