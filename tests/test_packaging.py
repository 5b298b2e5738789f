"""An installed cifd_clip (a built wheel, outside the checkout) carries what the demo needs."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_recipes_suites_and_model_configs_and_the_demo_finds_them(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(REPO), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    assert "absent from the `packages` configuration" not in build.stderr  # no package-data warning
    wheel = next((tmp_path / "dist").glob("cifd_clip-*.whl"))
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    probe = ("import cifd_clip, sys; from cifd_clip.demo.steps import DEMO_SUITE, TEACHER_SPACE_SUITE, build_steps, resolve_recipes; "
             "assert cifd_clip.__file__.startswith(sys.argv[1]), cifd_clip.__file__; "
             "steps = build_steps(resolve_recipes(None), 'small'); "
             "print(len(steps), DEMO_SUITE.is_file() and TEACHER_SPACE_SUITE.is_file())")
    env = dict(os.environ, PYTHONPATH=str(installed))
    run = subprocess.run([sys.executable, "-c", probe, str(installed)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    from cifd_clip.demo.steps import STEPS

    assert run.stdout.split() == [str(len(STEPS)), "True"]  # every step, and both suites the demo benches
    names = zipfile.ZipFile(wheel).namelist()
    assert "cifd_clip/model_configs/tiny-rn-student.json" in names
    assert "cifd_clip/evaluation/suites/paper.yaml" in names
