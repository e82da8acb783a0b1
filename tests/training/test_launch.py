"""A DPO run on two processes over gloo (training.launch under torchrun, DDP through the Trainer's
accelerate), on the CPU: its adapter is the one-process run's with the same effective batch, within
1e-5 (float32 sums in another order), process 0 reports every step, and a cancel stops both."""

from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import load_file

from training.dpo import DPOTrainConfig, PreferencePair, create_initial_adapter, train_dpo
from training.launch import run_on_processes

PAIRS = [
    PreferencePair(prompt=[{"role": "user", "content": "Hi?"}], chosen="Hello there!", rejected="Go away."),
    PreferencePair(prompt=[{"role": "user", "content": "Sky?"}], chosen="Blue.", rejected="Green."),
]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def start(tiny_policy_path, tmp_path_factory):
    return create_initial_adapter(tiny_policy_path, tmp_path_factory.mktemp("v1") / "v1", DPOTrainConfig())


def _kwargs(base, start, out, per_process_batch: int) -> dict:
    # two pairs, an effective batch of two: every step sees both pairs, whatever order each takes
    config = DPOTrainConfig(max_steps=3, per_device_train_batch_size=per_process_batch, learning_rate=1e-3)
    return {"base_model_path": base, "adapter_path": start, "pairs": PAIRS, "out_dir": out, "config": config}


def test_two_processes_train_the_adapter_one_process_trains(tiny_policy_path, start, tmp_path):
    one = train_dpo(**_kwargs(tiny_policy_path, start, tmp_path / "one", 2))
    seen: list[dict] = []
    two = run_on_processes(
        "training.dpo.train_dpo", _kwargs(tiny_policy_path, start, tmp_path / "two", 1),
        processes=2, work_dir=tmp_path / "work", progress=seen.append,
    )  # fmt: skip
    assert two["steps"] == one["steps"] == 3 and [s["step"] for s in seen] == [1, 2, 3]
    a, b = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("one", "two"))
    before = load_file(str(start / "adapter_model.safetensors"))
    moved = max(float((a[k] - before[k]).abs().max()) for k in a)
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 100 * TOLERANCE and gap < TOLERANCE, (moved, gap)
    assert torch.allclose(torch.tensor(one["final_loss"]), torch.tensor(two["final_loss"]), atol=1e-4)


def test_a_cancel_stops_every_process(tiny_policy_path, start, tmp_path):
    pids: list[int] = []

    def cancel_at_the_first_step(entry: dict) -> None:
        pids.extend(int(p) for p in os.listdir("/proc") if p.isdigit() and _in_run(int(p), tmp_path))
        raise RuntimeError("cancelled")

    kwargs = _kwargs(tiny_policy_path, start, tmp_path / "out", 1)
    kwargs["config"] = DPOTrainConfig(max_steps=500, per_device_train_batch_size=1, learning_rate=1e-3)
    with pytest.raises(RuntimeError, match="cancelled"):
        run_on_processes("training.dpo.train_dpo", kwargs, processes=2, work_dir=tmp_path / "work",
                         progress=cancel_at_the_first_step)  # fmt: skip
    assert len(pids) >= 3  # torchrun and its two training processes were running
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def _in_run(pid: int, tmp_path) -> bool:
    try:
        return str(tmp_path / "work") in open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
