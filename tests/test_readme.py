"""README's set-up commands: exactly two, and CI runs the test one verbatim."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jang import data

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)


def test_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2
    assert "jang" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup_commands()[1] in ci.splitlines()


def test_ci_builds_and_installs_the_wheel():
    """The wheel step (scripts/wheel.sh) is part of CI and runs the README's main job."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/wheel.sh || rc=1" in ci.splitlines()
    script = (ROOT / "scripts" / "wheel.sh").read_text()
    main_job = setup_commands()[0]
    for step in ("jang convert smollm2", "--profile JANG_4K", "jang generate"):
        assert step in main_job and step in script
    assert "--only-binary :all:" in script and "auditwheel repair" in script


def tour_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Tour", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)
    return [line.split("  #")[0].strip() for line in block.splitlines()]


def test_tour_is_ten_lines():
    assert len(tour_commands()) == 10


@pytest.mark.skipif(data.path("smollm2") is None, reason="run `jang data smollm2`")
def test_the_tour_runs(tmp_path):
    """Every command of the README's tour, in order, in a fresh directory (the eval on 2
    short windows instead of 40 long ones, to keep the suite quick)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for command in tour_commands():
        if command.startswith("jang eval"):
            command += " --windows 2 --length 64"
        if command.startswith("python "):
            command = f"{sys.executable} {command.removeprefix('python ')}"
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert (tmp_path / "kl.png").stat().st_size > 0
    assert "| wiki | 2 x 64 |" in (tmp_path / "sm" / "README.md").read_text()
