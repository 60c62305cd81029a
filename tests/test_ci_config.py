"""The CI files parse, and every command they name exists: the tox environments, the fdsm-bench subcommands,
and the README's test command, which .ci/run and the CPU workflow both run verbatim."""

import configparser
import re
import shlex
from pathlib import Path

import pytest
import yaml

from bench.cli import build_parser
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def readme_test_command() -> str:
    section = (ROOT / "README.md").read_text().split("## Run the tests", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def tox_envs() -> set[str]:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini")
    return {s.split(":", 1)[1] for s in config.sections() if s.startswith("testenv:")}


def fdsm_bench_subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return set(sub.choices)


def check_command(line: str) -> None:
    """Each `&&`-separated command starts with a known program, and names only tox envs / subcommands that exist."""
    for part in line.split("&&"):
        words = shlex.split(part)
        assert words[0] in {"python3", "tox", "pytest", "fdsm-bench", "mkdir", "ruff"}, f"unknown program in {part!r}"
        if words[0] == "tox" and "-e" in words:
            assert set(words[words.index("-e") + 1].split(",")) <= tox_envs(), part
        if words[0] == "fdsm-bench":
            assert words[1] in fdsm_bench_subcommands(), part


def test_there_are_cpu_and_gpu_workflows():
    assert {p.stem for p in WORKFLOWS} >= {"cpu", "gpu"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_parses_and_names_existing_commands(path):
    workflow = yaml.safe_load(path.read_text())
    assert workflow["jobs"], path
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert runs, f"{path.name} runs nothing"
    for run in runs:
        for line in run.strip().splitlines():
            check_command(line)


def test_gpu_workflow_runs_on_a_self_hosted_gpu_label_and_uploads_its_folder():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu.yml").read_text())
    (job,) = workflow["jobs"].values()
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in job["steps"])


def test_tox_envs_name_existing_commands():
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini")
    for env in tox_envs():
        for line in config[f"testenv:{env}"].get("commands", "").strip().splitlines():
            check_command(re.sub(r"\{[^}]*\}", "x", line))  # tox substitutions {posargs}, {env:...} -> a word


def test_ci_and_cpu_workflow_run_the_readme_test_command():
    command = readme_test_command()
    assert command in (ROOT / ".ci" / "run").read_text()
    assert command in (ROOT / ".github" / "workflows" / "cpu.yml").read_text()


def test_gpu_script_names_existing_commands_with_valid_options():
    script = (ROOT / "scripts" / "gpu-h200.sh").read_text()
    script = script.replace("\\\n", "")  # join continued lines
    bench_lines = [line.split("-m bench", 1)[1] for line in script.splitlines()
                   if line.startswith("stage ") and "-m bench" in line]
    assert {shlex.split(line)[0] for line in bench_lines} >= {"train-steps", "derivatives"}
    for line in bench_lines:
        args = shlex.split(line.replace('"$OUT"', "out"))
        assert build_parser().parse_args(args).device == "cuda", line  # parses: every option exists
    profile_lines = [line.split("scripts/profile_step.py", 1)[1] for line in script.splitlines()
                     if line.startswith("stage ") and "scripts/profile_step.py" in line]
    assert profile_lines
    profile_step = load_script("profile_step")
    for line in profile_lines:
        assert profile_step.build_parser().parse_args(shlex.split(line.replace('"$OUT', '"out'))).device == "cuda"
    limits = [int(line.split()[2]) for line in script.splitlines() if line.startswith("stage ")]
    assert sum(limits) <= 8 * 60  # the lent machine's run must fit in its few minutes
