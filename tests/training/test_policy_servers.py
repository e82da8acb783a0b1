"""The policy servers, built-in and vLLM, as real processes on localhost, through PolicyClient.

Behaviour both must share is parametrized over both servers; each server starts once for the
module. The vLLM server runs from ``.venv-vllm`` (or ``$VLLM_PYTHON``) and is skipped only when
that interpreter does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, stop_process_group
from training.policy_client import PolicyClient, PolicyServerError
from training.policy_server import policy_server_command
from training.vllm_server import default_vllm_python, vllm_command

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BASE = "base"
ADAPTER = "policy"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Server:
    """A policy server process started by a fixture, with a client for it."""

    kind: str
    process: subprocess.Popen[bytes]
    client: PolicyClient
    log_path: Path

    @property
    def url(self) -> str:
        return self.client.base_url

    def greedy(self, model: str, max_tokens: int = 16) -> str:
        return self.client.chat(QUESTION, model=model, max_tokens=max_tokens, temperature=0.0, seed=0)[0]


def _log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _start(kind: str, argv: list[str], env: dict[str, str], log_path: Path, ready_timeout: float) -> Server:
    log = log_path.open("wb")
    process = subprocess.Popen(
        argv, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    port = argv[argv.index("--port") + 1]
    client = PolicyClient(f"http://127.0.0.1:{port}", timeout=60.0)
    server = Server(kind=kind, process=process, client=client, log_path=log_path)
    try:
        waited = 0.0
        while True:
            if process.poll() is not None:
                pytest.fail(f"{kind} server exited with {process.returncode}:\n{_log_tail(log_path)}")
            try:
                client.wait_ready(timeout=2.0)
                return server
            except PolicyServerError:
                waited += 2.0
                if waited >= ready_timeout:
                    raise
    except BaseException:
        stop_process_group(process)
        print(_log_tail(log_path))
        raise


def _run_server(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.client.close()
        stop_process_group(server.process)


@pytest.fixture(scope="module")
def adapters(tiny_policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two LoRA adapters of the tiny policy: a freshly initialised one (a no-op) and a random, strong one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapters")
    paths = (folder / "adapter-1", folder / "adapter-2")
    generator = torch.Generator().manual_seed(1234)
    for path, randomise in zip(paths, (False, True), strict=True):
        base = AutoModelForCausalLM.from_pretrained(tiny_policy_path)
        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
        )
        model = get_peft_model(base, config)
        if randomise:
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if "lora_A" in name or "lora_B" in name:
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        model.save_pretrained(path)
    return paths


@pytest.fixture(scope="module")
def builtin_server(
    tiny_policy_path: Path, adapters: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``python -m training.policy_server`` serving the tiny policy, with adapter 1 as "policy"."""
    argv = policy_server_command(tiny_policy_path, port=free_port(), served_model_name=BASE,
                                 lora_modules={ADAPTER: adapters[0]},
                                 extra=["--num-threads", "1", "--log-level", "warning"])  # fmt: skip
    log_path = tmp_path_factory.mktemp("logs") / "builtin-server.log"
    yield from _run_server(_start("builtin", argv, dict(os.environ), log_path, ready_timeout=120))


@pytest.fixture(scope="module")
def vllm_server(
    tiny_policy_path: Path, adapters: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """vLLM's OpenAI server from the vLLM virtualenv, serving the same model and adapter."""
    python = default_vllm_python()
    if not Path(python).exists():
        pytest.skip(f"no vLLM interpreter at {python}: create .venv-vllm (make test does) or set VLLM_PYTHON")
    argv, extra_env = vllm_command(
        tiny_policy_path,
        port=free_port(),
        served_model_name=BASE,
        lora_modules={ADAPTER: str(adapters[0])},
        python=python,
    )
    log_path = tmp_path_factory.mktemp("logs") / "vllm-server.log"
    yield from _run_server(_start("vllm", argv, {**os.environ, **extra_env}, log_path, ready_timeout=300))


@pytest.fixture(params=["builtin", "vllm"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each policy server in turn."""
    return request.getfixturevalue(f"{request.param}_server")


# --------------------------------------------------------------------------- shared behaviour


def test_models_list_base_and_adapter(server: Server, tiny_policy_path: Path, adapters: tuple[Path, Path]) -> None:
    entries = {entry["id"]: entry for entry in server.client.models()}
    assert set(entries) == {BASE, ADAPTER}
    assert entries[BASE]["root"] == str(tiny_policy_path)
    assert entries[ADAPTER]["parent"] == BASE
    assert server.client.adapter_root(ADAPTER) == str(adapters[0])
    assert server.client.adapter_root("no-such-model") is None


def test_chat_returns_text(server: Server) -> None:
    answer = server.greedy(BASE)
    assert isinstance(answer, str) and answer.strip()
    assert server.greedy(BASE) == answer  # greedy decoding is deterministic


def test_stream_concatenates_to_the_greedy_answer(server: Server) -> None:
    deltas = list(server.client.chat_stream(QUESTION, model=BASE, max_tokens=16, temperature=0.0, seed=0))
    assert len(deltas) >= 3
    assert all(isinstance(delta, str) and delta for delta in deltas)
    assert "".join(deltas) == server.greedy(BASE)


def test_n_returns_that_many_choices(server: Server) -> None:
    answers = server.client.chat(QUESTION, model=BASE, n=2, max_tokens=12, temperature=1.0, seed=7)
    assert len(answers) == 2
    assert all(isinstance(answer, str) for answer in answers)
    assert any(answer.strip() for answer in answers)
    with pytest.raises(PolicyServerError) as caught:  # vLLM refuses n > 1 with greedy decoding
        server.client.chat(QUESTION, model=BASE, n=3, max_tokens=12, temperature=0.0)
    assert caught.value.status_code == 400 and "greedy" in str(caught.value)


def test_lora_hot_swap_without_restart(server: Server, adapters: tuple[Path, Path]) -> None:
    pid = server.process.pid
    base_answer = server.greedy(BASE)
    before = server.greedy(ADAPTER)
    assert before == base_answer  # adapter 1 is freshly initialised: lora_B = 0
    try:
        server.client.load_lora_adapter(ADAPTER, str(adapters[1]), load_inplace=True)
        assert server.client.adapter_root(ADAPTER) == str(adapters[1])
        after = server.greedy(ADAPTER)
        assert after != before
        assert server.greedy(BASE) == base_answer  # the base is untouched by the adapter
    finally:
        server.client.load_lora_adapter(ADAPTER, str(adapters[0]), load_inplace=True)
    assert server.client.adapter_root(ADAPTER) == str(adapters[0])
    assert server.greedy(ADAPTER) == before
    assert server.process.poll() is None and server.process.pid == pid


def _ask_while(server: Server, model: str, change: Callable[[int], None], changes: int) -> list[str]:
    """Greedy answers of ``model`` from 3 threads (4 each) while ``change(i)`` runs ``changes`` times."""
    answers: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(4):
                answers.append(server.greedy(model, max_tokens=8))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(changes):
        change(i)
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, f"{errors}\n{_log_tail(server.log_path)}"
    assert len(answers) == 12, answers
    return answers


def test_loading_other_adapters_leaves_running_requests_alone(server: Server, adapters: tuple[Path, Path]) -> None:
    """The swap that is safe on both servers: load the new weights under a new name, then switch names."""
    expected = server.greedy(ADAPTER, max_tokens=8)

    def load_or_unload(i: int) -> None:
        if i % 2 == 0:
            server.client.load_lora_adapter("next", str(adapters[1]), load_inplace=False)
        else:
            server.client.unload_lora_adapter("next")

    answers = _ask_while(server, ADAPTER, load_or_unload, changes=6)
    assert set(answers) == {expected}
    assert server.client.adapter_root("next") is None


def test_builtin_requests_never_see_a_half_swapped_adapter(builtin_server: Server, adapters: tuple[Path, Path]) -> None:
    """In-place swaps on the built-in server are atomic for running requests.

    (vLLM swaps in place between two decoding steps, so a running request may finish with the
    new weights; the test above shows the pattern that is safe there.)
    """
    expected = {}
    try:
        for path in (adapters[1], adapters[0]):
            builtin_server.client.load_lora_adapter(ADAPTER, str(path), load_inplace=True)
            expected[path] = builtin_server.greedy(ADAPTER, max_tokens=8)

        def swap(i: int) -> None:
            builtin_server.client.load_lora_adapter(ADAPTER, str(adapters[i % 2]), load_inplace=True)

        answers = _ask_while(builtin_server, ADAPTER, swap, changes=8)
        assert set(answers) <= set(expected.values()), (answers, expected)
    finally:
        builtin_server.client.load_lora_adapter(ADAPTER, str(adapters[0]), load_inplace=True)


def test_load_and_unload_a_second_adapter(server: Server, adapters: tuple[Path, Path]) -> None:
    server.client.load_lora_adapter("extra", str(adapters[1]), load_inplace=False)
    try:
        assert server.client.adapter_root("extra") == str(adapters[1])
        assert server.greedy("extra") != server.greedy(ADAPTER)
        with pytest.raises(PolicyServerError) as caught:
            server.client.load_lora_adapter("extra", str(adapters[0]), load_inplace=False)
        assert caught.value.status_code == 400
        assert "already been loaded" in str(caught.value)
    finally:
        server.client.unload_lora_adapter("extra")
    assert server.client.adapter_root("extra") is None
    with pytest.raises(PolicyServerError) as caught:
        server.greedy("extra")
    assert caught.value.status_code == 404


def test_unknown_model_and_missing_adapter_are_client_errors(server: Server, tmp_path: Path) -> None:
    with pytest.raises(PolicyServerError) as caught:
        server.client.chat(QUESTION, model="no-such-model")
    assert caught.value.status_code == 404
    assert "no-such-model" in str(caught.value) and server.url in str(caught.value)
    with pytest.raises(PolicyServerError) as caught:
        list(server.client.chat_stream(QUESTION, model="no-such-model"))
    assert caught.value.status_code == 404 and "no-such-model" in str(caught.value)
    with pytest.raises(PolicyServerError) as caught:
        server.client.load_lora_adapter("broken", str(tmp_path / "missing"))
    assert caught.value.status_code is not None and 400 <= caught.value.status_code < 500
    with pytest.raises(PolicyServerError) as caught:
        server.client.unload_lora_adapter("never-loaded")
    assert caught.value.status_code == 404
    assert server.client.adapter_root("broken") is None


def test_completions_endpoint(server: Server) -> None:
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    response = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": BASE, "prompt": prompt, "max_tokens": 16, "temperature": 0},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == server.greedy(BASE)
    assert body["usage"]["completion_tokens"] > 0


def test_both_servers_give_the_same_greedy_text(builtin_server: Server, vllm_server: Server) -> None:
    assert builtin_server.greedy(BASE) == vllm_server.greedy(BASE)


# --------------------------------------------------------------------- built-in server details


def _post(server: Server, path: str, content: bytes | str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, headers={"content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "JSON object"),
        (json.dumps({"model": BASE}), 400, "'messages'"),
        (json.dumps({"model": BASE, "messages": [{"role": "user"}]}), 400, "content"),
        (json.dumps({"messages": QUESTION}), 400, "'model'"),
        (json.dumps({"model": "nope", "messages": QUESTION}), 404, "nope"),
        (json.dumps({"model": BASE, "messages": QUESTION, "n": 0}), 400, "'n'"),
        (json.dumps({"model": BASE, "messages": QUESTION, "temperature": "hot"}), 400, "'temperature'"),
        (json.dumps({"model": BASE, "messages": QUESTION, "top_p": 0}), 400, "'top_p'"),
        (json.dumps({"model": BASE, "messages": QUESTION, "max_tokens": 100000}), 400, "max_tokens"),
        (json.dumps({"model": BASE, "messages": QUESTION, "seed": "x"}), 400, "'seed'"),
        (json.dumps({"model": BASE, "messages": QUESTION, "stream": "yes"}), 400, "'stream'"),
    ],
)
def test_builtin_rejects_bad_chat_requests(builtin_server: Server, body: str, status: int, words: str) -> None:
    response = _post(builtin_server, "/v1/chat/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"]
    assert error["code"] == status and error["type"]


def test_builtin_rejects_bad_adapters(builtin_server: Server, tmp_path: Path, tiny_policy_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{not json")
    wrong_base = tmp_path.parent / f"{tmp_path.name}-wrong-base"
    _save_wide_adapter(wrong_base)
    cases = [
        ({"lora_name": "x"}, "'lora_path'"),
        ({"lora_path": str(tmp_path)}, "'lora_name'"),
        ({"lora_name": "x", "lora_path": str(tmp_path / "missing")}, "no adapter_config.json"),
        ({"lora_name": "x", "lora_path": str(tmp_path)}, "bad LoRA config"),
        ({"lora_name": "x", "lora_path": str(tiny_policy_path)}, "no adapter_config.json"),
        ({"lora_name": "x", "lora_path": str(wrong_base)}, "another base model"),
        ({"lora_name": BASE, "lora_path": str(wrong_base)}, "differ from the base model"),
        ({"lora_name": "x", "lora_path": str(wrong_base), "load_inplace": "no"}, "'load_inplace'"),
    ]
    for body, words in cases:
        response = _post(builtin_server, "/v1/load_lora_adapter", json.dumps(body))
        assert response.status_code == 400, (body, response.text)
        assert words in response.json()["error"]["message"], body
    assert builtin_server.client.adapter_root("x") is None
    assert builtin_server.greedy(ADAPTER) == builtin_server.greedy(BASE)  # still serving, nothing half-loaded


def _save_wide_adapter(path: Path) -> None:
    """A LoRA adapter for a Qwen2 twice as wide as the tiny policy (so its weights do not fit)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64, hidden_size=128, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1,
    )  # fmt: skip
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(path)


def test_builtin_unknown_routes_and_methods_are_json_errors(builtin_server: Server) -> None:
    response = httpx.get(f"{builtin_server.url}/v1/nothing-here", timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == 404
    response = httpx.get(f"{builtin_server.url}/v1/chat/completions", timeout=30)
    assert response.status_code == 405 and "GET" in response.json()["error"]["message"]
    assert httpx.get(f"{builtin_server.url}/health", timeout=30).status_code == 200


def test_builtin_streams_openai_chunks(builtin_server: Server) -> None:
    body = {
        "model": ADAPTER,
        "messages": QUESTION,
        "max_tokens": 8,
        "temperature": 1,
        "seed": 3,
        "n": 2,
        "stream": True,
    }
    with httpx.stream("POST", f"{builtin_server.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk["model"] for chunk in chunks} == {ADAPTER}
    texts = {0: "", 1: ""}
    finished = {}
    for chunk in chunks:
        choice = chunk["choices"][0]
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finished[choice["index"]] = choice["finish_reason"]
    assert set(finished) == {0, 1} and set(finished.values()) <= {"stop", "length"}
    body["stream"] = False  # the same seed gives the same two answers without streaming
    response = httpx.post(f"{builtin_server.url}/v1/chat/completions", json=body, timeout=60)
    assert [choice["message"]["content"] for choice in response.json()["choices"]] == [texts[0], texts[1]]
