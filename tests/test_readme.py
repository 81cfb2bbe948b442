"""The README's promises: its test command is what CI runs, and its API example runs."""

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
