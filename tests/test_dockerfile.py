"""The Dockerfile, checked statically (no Docker engine here): base, pins, arch list, user, entrypoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    return parser


def _instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == name]


def _args(parser: DockerfileParser) -> dict[str, str]:
    values: dict[str, str] = {}
    for value in _instructions(parser, "ARG"):
        key, _, default = value.partition("=")
        values[key.strip()] = default.strip().strip('"')
    return values


def _pin(requirement_name: str) -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(rf"{requirement_name}==([\w.]+)", requirement.replace(" ", ""))
        if match:
            return match.group(1)
    raise AssertionError(f"{requirement_name} is not pinned with == in pyproject.toml")


def test_build_stage_is_a_cuda_devel_image_matching_torchs_cuda(dockerfile: DockerfileParser) -> None:
    froms = _instructions(dockerfile, "FROM")
    args = _args(dockerfile)
    first = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0].split()[0])
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-devel-ubuntu[\d.]+", first), first
    if torch.version.cuda:  # the pinned torch build here is the one the image installs
        major_minor = ".".join(args["CUDA_VERSION"].split(".")[:2])
        assert major_minor == torch.version.cuda


def test_arch_list_covers_ampere_and_hopper(dockerfile: DockerfileParser) -> None:
    archs = set(re.split(r"[;\s]+", _args(dockerfile)["TORCH_CUDA_ARCH_LIST"]))
    assert {"8.0", "8.6", "9.0"} <= archs


def test_torch_and_torchvision_equal_the_pyproject_pins(dockerfile: DockerfileParser) -> None:
    args = _args(dockerfile)
    assert args["TORCH_VERSION"] == _pin("torch")
    assert args["TORCHVISION_VERSION"] == _pin("torchvision")
    runs = " ".join(_instructions(dockerfile, "RUN"))
    assert '"torch==${TORCH_VERSION}"' in runs and '"torchvision==${TORCHVISION_VERSION}"' in runs


def test_detectron2_is_built_from_a_pinned_commit(dockerfile: DockerfileParser) -> None:
    commit = _args(dockerfile)["DETECTRON2_COMMIT"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert any("checkout ${DETECTRON2_COMMIT}" in run for run in _instructions(dockerfile, "RUN"))


def test_package_is_installed_with_gpu_extras(dockerfile: DockerfileParser) -> None:
    runs = _instructions(dockerfile, "RUN")
    assert any(re.search(r"pip install .*\.\[gpu,detection", run) for run in runs)
    copied = " ".join(_instructions(dockerfile, "COPY"))
    assert "pyproject.toml" in copied and "sslbench" in copied


def test_configs_ship_inside_the_package_not_beside_it(dockerfile: DockerfileParser) -> None:
    copied = [value.split()[0] for value in _instructions(dockerfile, "COPY") if "--from" not in value]
    assert "configs" not in copied  # a top-level configs/ would only work for an editable install
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    configs = REPO / "sslbench" / "configs"
    shipped = sorted(path.relative_to(configs) for path in configs.rglob("*.yaml"))
    assert shipped, "no shipped configs"
    assert all(
        any(path.match(pattern) for pattern in package_data["sslbench.configs"]) for path in shipped
    ), package_data


def test_runs_as_a_non_root_user_with_sslbench_as_entrypoint(dockerfile: DockerfileParser) -> None:
    users = _instructions(dockerfile, "USER")
    assert users and users[-1] not in ("root", "0")
    assert json.loads(_instructions(dockerfile, "ENTRYPOINT")[-1]) == ["sslbench"]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", "runs", "datasets"} <= {line.strip("/") for line in ignored}


@pytest.mark.parametrize("argv", [["--help"], ["suite", "--help"], ["detect", "--help"]])
def test_entrypoint_commands_answer_help(argv: list[str]) -> None:
    exe = shutil.which("sslbench")
    command = [exe] if exe else [sys.executable, "-m", "sslbench"]
    result = subprocess.run(command + argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: sslbench" in result.stdout
