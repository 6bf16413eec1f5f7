"""What a reader of the book sees in the chapters' sources: code that fits the content column, numbered
sections, exercises with hidden solutions and checks.  (Chapters listed in CHECKED; add the others as they
comply.)"""

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHECKED = sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.ipynb"))  # every chapter
WITH_EXERCISES = [name for name in CHECKED if not name.startswith("08")]  # the summary has none
MAX_CODE_LINE = 90  # characters: wider lines scroll sideways in the book's content column


def _cells(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells


@pytest.mark.parametrize("name", CHECKED)
def test_code_lines_fit_the_content_column(name):
    long = [(i, len(line)) for i, cell in enumerate(_cells(name)) if cell.cell_type == "code"
            for line in cell.source.splitlines() if len(line) > MAX_CODE_LINE]
    assert not long, f"{name}: code lines over {MAX_CODE_LINE} characters (cell, length): {long}"


@pytest.mark.parametrize("name", CHECKED)
def test_sections_are_numbered_like_the_chapter(name):
    chapter = name.split("_")[0].lstrip("0")  # "3", "6b"
    headings = [line for cell in _cells(name) if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if line.startswith("## ")]
    unnumbered_ok = {"## What we found", "## Exercises", "## Record"}
    wrong = [h for h in headings if h not in unnumbered_ok and not re.match(rf"## {chapter}\.\d+ ", h)]
    assert not wrong, f"{name}: sections not numbered '{chapter}.N': {wrong}"


@pytest.mark.parametrize("name", WITH_EXERCISES)
def test_exercises_have_hidden_solutions_and_checks(name):
    cells = _cells(name)
    heading = re.compile(r"## (\d+b?\.\d+ )?Exercises")
    start = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and heading.match(c.source))
    end = next((i for i, c in enumerate(cells) if i > start and c.cell_type == "markdown"
                and c.source.startswith("## ")), len(cells))
    exercises = cells[start:end]
    statements = [c for c in exercises if c.cell_type == "markdown" and "**Exercise" in c.source]
    solutions = [c for c in exercises if "hide-input" in c.metadata.get("tags", [])]
    checks = [c for c in exercises if c.cell_type == "code" and "exercises_ok[" in c.source]
    assert 2 <= len(statements) <= 3, f"{name}: {len(statements)} exercises"
    assert len(solutions) == len(statements) == len(checks)
    # CI runs the solutions: a hidden cell must fail the chapter if one of them stops passing its check
    assert any("remove-cell" in c.metadata.get("tags", []) and "assert all(exercises_ok.values())" in c.source
               for c in exercises), f"{name}: no hidden assert over exercises_ok"
