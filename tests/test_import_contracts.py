"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they catch a
wrong-way import: each case copies the packages to a scratch folder, adds one bad import there
and checks that ``lint-imports`` fails naming the broken contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("contracts")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__", "*.sql", "templates", "*.lua")
    shutil.copytree(ROOT / "qrunner", root / "qrunner", ignore=ignore)
    for package in ("notifyhub", "qrunner_devservers"):
        shutil.copytree(ROOT / "app" / package, root / package, ignore=ignore)
    return root


def test_the_contracts_hold_on_the_tree() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("qrunner/job.py", "import qrunner.worker", "qrunner's layers"),
        ("qrunner/scripts.py", "import qrunner.queue", "qrunner's layers"),
        ("qrunner/queue.py", "import notifyhub.db", "knows nothing of the app"),
        ("qrunner/worker.py", "import qrunner_devservers.embedded", "knows nothing of the app"),
        ("notifyhub/state.py", "from qrunner.queue import Client", "public API"),
    ],
)
def test_a_wrong_way_import_breaks_a_contract(
    scratch: Path, module: str, bad_import: str, contract: str
) -> None:
    path = scratch / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{bad_import}  # deliberately wrong\n")
        out = lint(scratch)
    finally:
        path.write_text(original)
    assert out.returncode != 0, out.stdout
    broken = [line for line in out.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), out.stdout
