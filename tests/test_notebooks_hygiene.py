"""Stored notebooks follow the notebook contract (DESIGN.md): no outputs, no execution
counts, one ``parameters`` cell with the contract's knobs, kernelspec ``python3``, a markdown
title first. Cheap: reads the files only."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if not p.name.startswith((".", "_")))
CONTRACT = ("quick", "seed", "device", "interactive", "out_dir")


@pytest.fixture(params=PATHS, ids=lambda p: p.stem)
def nb(request):
    notebook = nbformat.read(request.param, as_version=4)
    nbformat.validate(notebook)
    return notebook


def test_stored_without_outputs_or_execution_counts(nb):
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"cells {dirty} have outputs or execution counts; clear them before committing"
    assert "papermill" not in nb.metadata, "this is an executed copy, not the source notebook"


def test_one_parameters_cell_with_the_contract_knobs(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{len(cells)} cells are tagged 'parameters'; exactly one must be"
    assert cells[0].cell_type == "code"
    assigned = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    assigned[t.id] = node.value
    missing = [k for k in CONTRACT if k not in assigned]
    assert not missing, f"the parameters cell lacks {missing}"
    assert isinstance(ast.literal_eval(assigned["quick"]), bool)
    assert ast.literal_eval(assigned["device"]) in ("auto", "cpu", "cuda")
    assert isinstance(ast.literal_eval(assigned["interactive"]), bool)


def test_kernelspec_python3(nb):
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_markdown_title_first(nb):
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        "the first cell must be a markdown title '# ...'"


def test_papermill_reads_every_parameter(nb):
    """papermill's parser gives up on some comments (an apostrophe, for one) and then silently
    drops the parameter from ``dmlviz list`` and from what ``-p`` may set."""
    from papermill.translators import PythonTranslator

    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = [node.targets[0].id for node in ast.parse(cell.source).body
             if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)]
    parsed = [p.name for p in PythonTranslator.inspect(cell)]
    assert parsed == names, f"papermill reads {parsed}, the cell assigns {names}"


def test_claims_come_from_the_ledger(nb):
    """A notebook that tests a paper's claims does so through ``dmlviz.claims`` and shows its
    claims table; every claim it assesses is registered for that notebook."""
    from dmlviz.claims import CLAIMS

    title = nb.cells[0].source.splitlines()[0]
    if title.startswith("# 00"):
        return
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "claims.table()" in code, "no cell shows the claims table (claims.table())"
    name = next(p.stem for p in PATHS if title[2:4] == p.stem[:2])
    for literal in ast.walk(ast.parse(code)):
        if isinstance(literal, ast.Constant) and literal.value in CLAIMS:
            assert CLAIMS[literal.value].notebook == name, \
                f"{literal.value} is registered for {CLAIMS[literal.value].notebook}, not {name}"


MAX_CELL_LINES = 25  # a reader sees narrative between short cells, not walls of code


def test_code_cells_are_short(nb):
    long = {i: len(c.source.splitlines()) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and len(c.source.splitlines()) > MAX_CELL_LINES}
    assert not long, (f"code cells {long} (index: lines) exceed {MAX_CELL_LINES} lines: split them, "
                      "or move helpers into the package")


def test_no_function_or_class_defined_in_a_notebook(nb):
    """Helpers live in the package, where they are documented and tested."""
    defined = [(i, n.name) for i, c in enumerate(nb.cells) if c.cell_type == "code"
               for n in ast.walk(ast.parse(_python(c.source)))
               if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    assert not defined, f"(cell, name) {defined} define helpers in the notebook; move them to dmlviz"


def _python(source: str) -> str:
    """The cell without IPython magics and shell escapes (not Python syntax)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())
