"""Tests for training.generation: sampling answers in-process and from a real policy server process."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import free_port, stop_process_group
from training.dpo import DPOTrainConfig, create_initial_adapter
from training.generation import Generation, Generator, HttpGenerator, LocalGenerator, SamplingConfig
from training.policy_client import PolicyClient, PolicyServerError
from training.policy_server import policy_server_command

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "What colour is grass?"}],
]
GREEDY = SamplingConfig(max_tokens=16, temperature=0.0)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the tiny model is fastest on one thread; more only contend on a busy machine


@pytest.fixture(scope="module")
def adapter(tiny_policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_initial_adapter(tiny_policy_path, tmp_path_factory.mktemp("adapters") / "v1", DPOTrainConfig())


@pytest.fixture(scope="module")
def local(tiny_policy_path: Path, adapter: Path) -> LocalGenerator:
    return LocalGenerator(tiny_policy_path, adapter, version="v1", batch_size=2)


# --- the shared interface -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"temperature": -0.5}, "temperature=-0.5"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"seed": 1.5}, "seed=1.5"),
    ],
)
def test_sampling_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


class _Echo(Generator):
    """A backend that answers with the last user message, to test the shared checks."""

    version = "echo-1"

    def _generate(
        self, prompts: list[list[dict[str, str]]], n: int, sampling: SamplingConfig
    ) -> list[list[Generation]]:
        return [[Generation(p[-1]["content"], self.version, "stop")] * n for p in prompts]


def test_generate_checks_its_arguments() -> None:
    echo = _Echo()
    assert echo.generate(PROMPTS[:2], n=2)[1] == [Generation("Hello!", "echo-1", "stop")] * 2
    assert echo.generate([]) == []
    with pytest.raises(ValueError, match="n=0"):
        echo.generate(PROMPTS, n=0)
    with pytest.raises(ValueError, match="n=2 needs sampling"):
        echo.generate(PROMPTS, n=2, sampling=GREEDY)
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        echo.generate([[{"role": "assistant", "content": "Hi"}]])


# --- in-process ---------------------------------------------------------------------------------


def test_local_batched_sampling_with_n(local: LocalGenerator) -> None:
    sampling = SamplingConfig(max_tokens=12, temperature=1.5, seed=3)
    rows = local.generate(PROMPTS, n=3, sampling=sampling)  # batches of 2 prompts, 3 sequences each
    assert [len(row) for row in rows] == [3, 3, 3]
    flat = [g for row in rows for g in row]
    assert all(isinstance(g.text, str) and g.version == "v1" for g in flat)
    assert all(g.finish_reason in ("stop", "length") for g in flat)
    assert all("<|im_end|>" not in g.text and "<|endoftext|>" not in g.text for g in flat)
    assert len({g.text for g in flat}) > 3  # sampled at a high temperature, the answers differ
    assert local.generate(PROMPTS, n=3, sampling=sampling) == rows  # a seed makes it reproducible


def test_local_batching_and_left_padding_do_not_change_answers(local: LocalGenerator) -> None:
    batched = local.generate(PROMPTS, sampling=GREEDY)
    one_by_one = [local.generate([prompt], sampling=GREEDY)[0] for prompt in PROMPTS]
    assert batched == one_by_one
    assert batched[0][0].text == "The capital of France is Paris."  # what the tiny policy was pre-trained on
    assert batched[0][0].finish_reason == "stop"


def test_local_finish_reason_length(local: LocalGenerator) -> None:
    (generation,) = local.generate(PROMPTS[:1], sampling=SamplingConfig(max_tokens=2, temperature=0.0))[0]
    assert generation.finish_reason == "length" and generation.text and len(generation.text) < 15


def test_local_default_version_names(tiny_policy_path: Path, adapter: Path) -> None:
    assert LocalGenerator(tiny_policy_path).version == tiny_policy_path.name
    assert LocalGenerator(tiny_policy_path, adapter).version == adapter.name
    with pytest.raises(ValueError, match="version=''"):
        LocalGenerator(tiny_policy_path, version="")
    with pytest.raises(ValueError, match="batch_size=0"):
        LocalGenerator(tiny_policy_path, batch_size=0)


# --- over HTTP, against a real policy server ----------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_policy_path: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyClient]:
    """``python -m training.policy_server`` serving the tiny policy with the adapter as "policy"."""
    port = free_port()
    argv = policy_server_command(tiny_policy_path, port=port, lora_modules={"policy": adapter},
                                 extra=["--num-threads", "1", "--log-level", "warning"])  # fmt: skip
    log_path = tmp_path_factory.mktemp("logs") / "policy-server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = PolicyClient(f"http://127.0.0.1:{port}", timeout=60.0)
    try:
        for _ in range(60):  # up to 120 s
            if process.poll() is not None:
                pytest.fail(f"policy server exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
            with contextlib.suppress(PolicyServerError):
                client.wait_ready(timeout=2.0)
                break
        else:
            pytest.fail(f"policy server not ready:\n{log_path.read_text(errors='replace')}")
        yield client
    finally:
        client.close()
        stop_process_group(process)


def test_http_generator_samples_n_answers_per_prompt(server: PolicyClient) -> None:
    generator = HttpGenerator(server, "policy", version="v1")
    rows = generator.generate(PROMPTS, n=2, sampling=SamplingConfig(max_tokens=12, temperature=1.0, seed=5))
    assert [len(row) for row in rows] == [2, 2, 2]
    assert all(isinstance(g.text, str) and g.version == "v1" and g.finish_reason is None for row in rows for g in row)
    assert any(g.text.strip() for row in rows for g in row)


def test_http_and_local_greedy_answers_agree(server: PolicyClient, local: LocalGenerator) -> None:
    """The served adapter and the in-process one are the same policy: greedy answers match."""
    http = HttpGenerator(server, "policy", max_concurrency=2)
    assert http.version == "policy"
    remote = [row[0].text for row in http.generate(PROMPTS, sampling=GREEDY)]
    assert remote == [row[0].text for row in local.generate(PROMPTS, sampling=GREEDY)]
    assert remote[0] == "The capital of France is Paris."


def test_http_generator_errors(server: PolicyClient) -> None:
    with pytest.raises(PolicyServerError) as caught:
        HttpGenerator(server, "no-such-model").generate(PROMPTS[:1])
    assert caught.value.status_code == 404
    with pytest.raises(ValueError, match="model_name=''"):
        HttpGenerator(server, "")
    with pytest.raises(ValueError, match="max_concurrency=0"):
        HttpGenerator(server, "policy", max_concurrency=0)
