"""The command line and environment that start vLLM (the running server is tested in test_policy_servers)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from training.vllm_server import PROJECT_ROOT, default_vllm_python, find_libiomp, vllm_command


@pytest.fixture
def fake_venv(tmp_path: Path) -> Path:
    """A virtualenv layout with an interpreter file and an Intel OpenMP library in a subfolder."""
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "python"
    python.write_text("")
    library = tmp_path / "lib" / "python3.11" / "site-packages" / "intel"
    library.mkdir(parents=True)
    (library / "libiomp5.so").write_text("")
    return python


def test_command_serves_the_model_and_adapters(fake_venv: Path) -> None:
    argv, env = vllm_command(
        "/models/tiny",
        port=8200,
        served_model_name="base",
        lora_modules={"policy": "/adapters/a1"},
        python=str(fake_venv),
    )
    assert argv[:3] == [str(fake_venv), "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(itertools.pairwise(argv))
    assert flags["--model"] == "/models/tiny"
    assert flags["--served-model-name"] == "base"
    assert flags["--port"] == "8200" and flags["--host"] == "127.0.0.1"
    assert flags["--max-lora-rank"] == "16" and flags["--max-model-len"] == "1024"
    assert "--enable-lora" in argv and "--enforce-eager" in argv
    assert argv[argv.index("--lora-modules") + 1] == "policy=/adapters/a1"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["LD_PRELOAD"].endswith("intel/libiomp5.so")


def test_command_without_adapters_still_allows_loading_them(fake_venv: Path) -> None:
    argv, env = vllm_command("/models/tiny", port=8200, served_model_name="base", python=str(fake_venv))
    assert "--lora-modules" not in argv
    assert "--enable-lora" in argv and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_python_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VLLM_PYTHON", raising=False)
    assert default_vllm_python() == str(PROJECT_ROOT / ".venv-vllm" / "bin" / "python")
    assert (PROJECT_ROOT / "training" / "vllm_server.py").is_file()
    monkeypatch.setenv("VLLM_PYTHON", str(tmp_path / "python"))
    assert default_vllm_python() == str(tmp_path / "python")
    assert find_libiomp(str(tmp_path / "python")) is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"port": 0}, "port=0"),
        ({"served_model_name": ""}, "served_model_name=''"),
        ({"max_lora_rank": 12}, "max_lora_rank=12"),
        ({"max_model_len": 8}, "max_model_len=8"),
        ({"lora_modules": {"base": "/a"}}, "'base'"),
        ({"kv_cache_bytes": 10}, "kv_cache_bytes=10"),
    ],
)
def test_bad_arguments_name_the_value(fake_venv: Path, kwargs: dict, words: str) -> None:
    arguments = {"port": 8200, "served_model_name": "base", "python": str(fake_venv), **kwargs}
    with pytest.raises(ValueError) as caught:
        vllm_command("/models/tiny", **arguments)
    assert words in str(caught.value)


def test_missing_interpreter_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="VLLM_PYTHON"):
        vllm_command("/models/tiny", port=8200, served_model_name="base", python=str(tmp_path / "none"))


def test_cli_prints_the_command(fake_venv: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training.vllm_server", "--model", "/models/tiny", "--port", "8201",
         "--lora-modules", "policy=/adapters/a1", "--print"],
        cwd=PROJECT_ROOT, env={"VLLM_PYTHON": str(fake_venv), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in result.stdout
    assert "--port 8201" in result.stdout and "--lora-modules policy=/adapters/a1" in result.stdout
