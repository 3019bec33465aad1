"""The layout's rules, read from the source: imports flow tune -> distributed -> model, never back; model/ is
pure PyTorch/NumPy; every package says in one line what it holds; no file grows past what a reader holds."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INFRASTRUCTURE = {"ray", "deepspeed", "mlflow", "webdataset", "distributed", "tune"}
MAX_LINES = 600


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", sources("model"), ids=lambda p: str(p.relative_to(REPO)))
def test_model_imports_no_infrastructure(path):
    assert not imported_roots(path) & INFRASTRUCTURE


@pytest.mark.parametrize("path", sources("distributed"), ids=lambda p: str(p.relative_to(REPO)))
def test_distributed_never_imports_tune(path):
    assert "tune" not in imported_roots(path)


def test_the_import_rules_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ray.train\nfrom tune.sweep import main\ndef f():\n    import mlflow\n")
    assert {"ray", "tune", "mlflow"} <= imported_roots(bad)


@pytest.mark.parametrize("package", sorted(p.parent for folder in ("model", "distributed", "tune")
                                            for p in (REPO / folder).rglob("__init__.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_package_says_in_one_line_what_it_holds(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert doc, f"{package}: no docstring"
    assert len(doc.split(". ")[0]) <= 240


@pytest.mark.parametrize("folder", ["model", "distributed", "tune", "tests", "bench"])
def test_no_python_file_reaches_600_lines(folder):
    long = {str(p.relative_to(REPO)): n for p in sources(folder)
            if (n := len(p.read_text().splitlines())) >= MAX_LINES}
    assert not long
