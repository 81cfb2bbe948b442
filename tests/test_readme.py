"""The README's promises: its test command is what CI runs, its API examples run, its public names hold."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README


def test_api_example_runs(capsys):
    example = re.search(r"## The library in 15 lines\n\n```python\n(.*?)```", README, re.S).group(1)
    assert len([line for line in example.splitlines() if line.strip()]) <= 15
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    before, after = map(float, re.search(r"one step: ([\d.]+) -> ([\d.]+)", printed).groups())
    assert after < before


def test_prepare_example_runs(tmp_path, capsys):
    """The README's ``prepare`` example, with 100 steps instead of 1000 and its folder under tmp_path."""
    example = re.search(r"From Python, a run is set up the same way.*?```python\n(.*?)```", README, re.S).group(1)
    assert '"steps": 1000' in example and '"runs/s"' in example
    example = example.replace('"steps": 1000', '"steps": 100').replace('"runs/s"', repr(str(tmp_path / "s")))
    exec(compile(example, "README.md", "exec"), {})
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) > 0
    assert {"config.json", "run.json", "metrics.jsonl"} <= {p.name for p in (tmp_path / "s").iterdir()}


def test_public_names_are_what_they_name_after_every_module_is_loaded():
    """``from jmaml.experiment import build`` is the function even once the package's modules are imported
    (a submodule called ``build`` would shadow it: Python sets the package attribute on import)."""
    import importlib
    import inspect
    import pkgutil

    import jmaml.experiment as experiment

    for module in pkgutil.iter_modules(experiment.__path__):
        importlib.import_module(f"jmaml.experiment.{module.name}")
    for name in experiment.__all__:
        assert not inspect.ismodule(getattr(experiment, name)), f"jmaml.experiment.{name} is a module"
