"""The package's layers hold: import-linter's contracts (pyproject.toml) and no pyplot in the
engine.

The engine imports no Qt, napari, magicgui or command line; the napari side (widgets, readers,
sample data, the demo's napari views) never imports the command line; no two sibling modules import
each other. import-linter cannot name a submodule of another package, so the rule "no pyplot in the
engine" (it would pick a global backend inside napari) is checked here from the source.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_contracts_are_kept():
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(SOURCE), environment.get("PYTHONPATH")])
    )
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _pyplot_uses(path: Path) -> list[str]:
    """Imports of matplotlib.pyplot and calls of matplotlib.use in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [
                f"import {a.name}" for a in node.names if a.name.startswith("matplotlib.pyplot")
            ]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.startswith("matplotlib.pyplot") or (
                node.module == "matplotlib" and any(a.name == "pyplot" for a in node.names)
            ):
                found.append(f"from {node.module} import ...")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "use"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "matplotlib"
        ):
            found.append("matplotlib.use(...)")
    return [f"{path.relative_to(ROOT)}: {use}" for use in found]


def test_the_engine_uses_no_pyplot():
    engine = sorted((SOURCE / "napari_dynamight" / "engine").rglob("*.py"))
    assert len(engine) > 50
    assert [use for path in engine for use in _pyplot_uses(path)] == []


def test_engine_plots_leave_the_matplotlib_backend_alone(tmp_path):
    """Writing the loss and FSC plots loads no pyplot and keeps the backend the host chose."""
    code = (
        "import sys, numpy as np, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from pathlib import Path\n"
        "from napari_dynamight.engine.deformation.outputs import plot_losses\n"
        "from napari_dynamight.engine.reconstruction.report import write_outputs\n"
        "from napari_dynamight.engine.run_folder import RunFolder\n"
        "run = RunFolder(sys.argv[1])\n"
        "plot_losses(run.path, [{'epoch': e, 'half': h, 'data': 1.0 / e, 'lambda': 0.5} "
        "for e in (1, 2) for h in (1, 2)])\n"
        "f = np.linspace(0, 0.5, 9)\n"
        "maps = {name: np.zeros((4, 4, 4), np.float32) for name in ('half1', 'half2', 'full')}\n"
        "write_outputs(run.reconstruction(), maps, 1.0, f, {'fsc_deformed': 1 - f})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print(matplotlib.get_backend(), run.loss_plot.stat().st_size > 0, "
        "run.reconstruction().fsc_plot.stat().st_size > 0)\n"
    )
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(SOURCE), environment.get("PYTHONPATH")])
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "True", "True"]
