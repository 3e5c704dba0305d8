"""The package's layers (DESIGN, "Package layout"): a module imports only from layers below it,
never through an import inside a function, and ``dmlviz/attention/`` only attends."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dmlviz"

#: what an attention module may import from the package (issue 14: "each module holds its
#: equations, its nn.Module and its functional core; it imports torch, dmlviz.checks and sibling
#: attention modules only") — and, from dmlviz.utils, the seed derivation of random landmarks
ATTENTION_MAY_IMPORT = ("dmlviz.checks", "dmlviz.attention")
ATTENTION_MAY_IMPORT_FROM_UTILS = {"derive_seed"}

#: modules whose imports inside functions are deliberate: the command line and the Dask
#: workers import lazily so that ``import dmlviz`` and ``dmlviz --help`` stay light, and a
#: worker process imports the runner only when it runs a job
LAZY_BY_DESIGN = {"cli.py", "executor.py", "runner.py", "sweep.py", "run_checks.py", "__init__.py"}


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """``(module, inside_a_function, line)`` of every ``dmlviz`` import in ``path``."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module] if child.module != "dmlviz" else [
                    f"dmlviz.{a.name}" for a in child.names]
                out.extend((n, in_function, child.lineno) for n in names if n.startswith("dmlviz"))
            elif isinstance(child, ast.Import):
                out.extend((a.name, in_function, child.lineno) for a in child.names
                           if a.name.startswith("dmlviz"))
            visit(child, inside)

    visit(tree, False)
    return out


@pytest.mark.parametrize("path", sorted((PACKAGE / "attention").glob("*.py")), ids=lambda p: p.name)
def test_attention_modules_only_attend(path):
    """No attention module imports training, losses, comparison, backbones or metrics — at
    module level or inside a function."""
    bad = [f"line {line}: {module}" for module, _, line in _imports(path)
           if not module.startswith(ATTENTION_MAY_IMPORT) and module != "dmlviz.utils"]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "dmlviz.utils":
            bad += [f"line {node.lineno}: dmlviz.utils.{a.name}" for a in node.names
                    if a.name not in ATTENTION_MAY_IMPORT_FROM_UTILS]
    assert not bad, f"{path.name} imports from above the attention layer: {bad}"


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p.name not in LAZY_BY_DESIGN),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_package_import_inside_a_function(path):
    """DESIGN: "a module imports only from layers below it (never through an import inside a
    function)"."""
    inside = [f"line {line}: {module}" for module, in_function, line in _imports(path) if in_function]
    assert not inside, f"{path.relative_to(PACKAGE)} imports inside functions: {inside}"


def test_one_embedder_class_and_one_registry():
    """Issue 14: one pooled embedder class; one name → builder registry of what is trained."""
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    embedders = [p.name for p, s in sources.items() if "class AttentionEmbedder" in s
                 or "class GlobalPoolEmbedder" in s or "class PooledEmbedder" in s]
    assert embedders == ["heads.py"]
    recipes = [p.name for p, s in sources.items()
               for name in ("def fit_attention_head", "def fit_attention_embedder",
                            "def fit_global_local", "def fit_refiner", "def build_variant",
                            "def train_method", "def build_method") if name in s]
    assert not recipes, f"training recipes outside dmlviz.heads: {recipes}"
