#!/usr/bin/env python
"""Build each project's sdist and wheel with the installed setuptools, every warning an error (``.ci/run``).

A packaging warning is a build that stops working later: setuptools deprecated the table form of
``project.license`` ("By 2027-Feb-18 ... your builds will no longer be supported"), which a fresh install
printed and nothing read. Each project (the repository root and every ``plugins/*/``) is copied to a temporary
folder first, so the build leaves no ``*.egg-info`` or ``build/`` in the checkout:

    python scripts/check_packaging.py . plugins/*/

Exits 1, with the build's output, when a project does not build or its build warns (setuptools' deprecations
are Python warnings; its ``warning:`` log lines, such as byte-compiling being off, are not).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BUILD = (
    "import setuptools, setuptools.build_meta as b;"
    "print('setuptools', setuptools.__version__, 'built', b.build_sdist('../out'), b.build_wheel('../out'))"
)
SKIP = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".*_cache")


def check(project: Path) -> tuple[bool, str]:
    """(built without a warning, what the build printed)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(project, source, ignore=SKIP)
        proc = subprocess.run(
            [sys.executable, "-W", "error", "-c", BUILD], cwd=source, capture_output=True, text=True, timeout=600
        )
    out = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, out  # a Python warning (setuptools' deprecations are) raised: -W error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("projects", nargs="+", type=Path, help="folders holding a pyproject.toml")
    args = parser.parse_args(argv)
    failed = 0
    for project in args.projects:
        ok, out = check(project)
        if ok:
            print(f"{project}: {next(line for line in out.splitlines() if line.startswith('setuptools '))}")
        else:
            failed += 1
            print(f"{project}: the build failed or warned:\n{out[-4000:]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
