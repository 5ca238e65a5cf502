"""The layout is the architecture: the server never reaches the tools, and each subpackage says what it holds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "lib" / "samlabel"
SERVER_SIDE = [p for p in PACKAGE.rglob("*.py") if "tools" not in p.relative_to(PACKAGE).parts]


def imported_modules(path: Path, lib: Path = ROOT / "lib") -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(lib).with_suffix("").parts[:-1]) if path.is_relative_to(lib) else ""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_no_server_side_module_imports_the_tools() -> None:
    assert len(SERVER_SIDE) > 40
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("samlabel.tools"))
        for p in [*SERVER_SIDE, ROOT / "apps" / "samlabel" / "main.py"]
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_import_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    fake = tmp_path / "samlabel" / "inference" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from samlabel.tools import sample_data\n\nfrom ..tools.rest import y\n")
    found = imported_modules(fake, tmp_path)
    assert {"samlabel.tools.sample_data", "samlabel.tools.rest"} <= found


def test_loading_the_app_loads_nothing_from_the_tools() -> None:
    """What ``monailabel start_server`` imports: the app's main.py and everything it pulls in."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('main', {str(ROOT / 'apps' / 'samlabel' / 'main.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in sys.modules if m.startswith('samlabel')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = ast.literal_eval(out.strip().splitlines()[-1])
    assert "samlabel.inference.engine" in loaded and "samlabel.server.install" in loaded
    assert not [m for m in loaded if m.startswith("samlabel.tools")]


def test_every_subpackage_says_what_belongs_there() -> None:
    packages = [p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert {p.name for p in packages} >= {
        "model",
        "adapters",
        "inference",
        "tasks",
        "server",
        "datastore",
        "training",
        "evaluation",
        "tools",
    }
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 80, package.name
