"""The `jang` command: version, doctor, planned subcommands, cmake dir."""

import subprocess
import sys

import jang
from jang import cli, doctor


def run_jang(*args):
    return subprocess.run(
        [sys.executable, "-m", "jang", *args], capture_output=True, text=True, timeout=120
    )


def test_version():
    result = run_jang("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"jang {jang.__version__}"


def test_doctor_reports_a_working_install():
    result = run_jang("doctor")
    assert result.returncode == 0, result.stderr
    for key in ("mlx ", "mlx_default_device", "extension", "metallib", "cpu_simd"):
        assert key in result.stdout
    assert result.stdout.strip().endswith("ok")


def test_doctor_facts():
    info = doctor.collect()
    assert info["mlx"] == "0.32.4"
    assert info["mlx_built_against"] == "0.32.4"
    assert info["cpu_simd"] in {"avx512", "avx2", "neon", "scalar"}
    assert doctor.problems(info) == []


def test_doctor_flags_version_skew():
    info = doctor.collect()
    info["mlx_built_against"] = "0.0.1"
    assert any("built against mlx 0.0.1" in p for p in doctor.problems(info))


def test_every_command_module_is_listed():
    import pkgutil

    from jang import commands

    modules = {m.name for m in pkgutil.iter_modules(commands.__path__)}
    assert modules == set(cli.COMMANDS)


def test_help_lists_subcommands():
    result = run_jang("--help")
    assert result.returncode == 0
    for name in cli.COMMANDS:
        assert name in result.stdout


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: jang" in capsys.readouterr().out


def test_cmake_dir_holds_config():
    result = run_jang("--cmake-dir")
    assert result.returncode == 0
    from pathlib import Path

    config = Path(result.stdout.strip())
    assert (config / "jangConfig.cmake").is_file()
    assert (config / "jangTargets.cmake").is_file()
