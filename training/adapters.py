"""Plumbing shared by every trainer that updates a LoRA adapter through TRL (DPO, KTO, GRPO).

Each trainer starts from the serving version's adapter, lets TRL keep a frozen copy of it as the
reference (the "ref" adapter), logs every step to a progress callback, and saves only the trained
adapter. What differs between them (the data and TRL's config class) stays in their own modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
REF_ADAPTER = "ref"  # the name TRL gives the frozen copy of the starting adapter
ProgressFn = Callable[[dict[str, Any]], None]


def load_base_model(base_model_path: str | Path, *, bf16: bool = False):  # -> PreTrainedModel
    """Load the base causal LM in float32 (or bfloat16) for training an adapter on it."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    return AutoModelForCausalLM.from_pretrained(str(base_model_path), dtype=dtype)


def check_folders(adapter_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """The starting adapter must be complete and the output folder empty (or missing)."""
    adapter = Path(adapter_path)
    missing = [name for name in ADAPTER_FILES if not (adapter / name).is_file()]
    if missing:
        raise FileNotFoundError(f"adapter folder {adapter} lacks {missing}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"out_dir {out} is not empty")
    return adapter, out


def load_trainable_policy(base_model_path: str | Path, adapter_path: Path, *, bf16: bool):  # -> PeftModel
    """The base model with the starting adapter, trainable."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base_model(base_model_path, bf16=bf16), str(adapter_path), is_trainable=True)


SHARDINGS = ("ddp", "fsdp")


def sharding_field() -> Any:  # a dataclasses.field
    """The `sharding` field of a trainer config whose runs may take several processes (DPO, KTO)."""
    from dataclasses import field

    return field(
        default="ddp",
        metadata={
            "help": "On several processes: 'ddp' (a whole copy of the model on each) or 'fsdp' (FSDP2: weights, "
            "gradients and optimiser state split over them, for a policy too big for one device)."
        },
    )


def check_sharding(sharding: Any) -> None:
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding={sharding!r} must be one of {SHARDINGS}")


def trainer_arguments(config: Any) -> dict[str, Any]:
    """TrainingArguments every adapter trainer shares: the config's optimisation settings, a log
    line every step, and nothing written besides the adapter (no checkpoints, no reports). On
    several processes (training.launch) a config whose `sharding` is "fsdp" shards the model with
    FSDP2 instead of copying it to each process (DDP)."""
    from training.launch import allow_fsdp_on_cpu, world_size

    sharded: dict[str, Any] = {}
    if getattr(config, "sharding", "ddp") == "fsdp" and world_size() > 1:
        # FSDP2: parameters, gradients and optimiser state split over the processes; `cpu_ram_efficient_loading`
        # off because the model is loaded whole in each process before the Trainer sees it
        sharded = {"fsdp": True, "fsdp_config": {"version": 2, "cpu_ram_efficient_loading": False}}
        if config.use_cpu:
            allow_fsdp_on_cpu()
    return {
        **sharded,
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps if config.max_steps is not None else -1,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "seed": config.seed,
        "data_seed": config.seed,
        "gradient_checkpointing": config.gradient_checkpointing,
        "use_cpu": config.use_cpu,
        "bf16": config.bf16,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }


def progress_callback(progress: ProgressFn | None, history: list[dict[str, Any]]):  # -> TrainerCallback
    """A callback that records each training-step log in ``history`` and passes a copy to ``progress``."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            # The end-of-training summary (train_loss, train_runtime, ...) has no "loss"; only step logs count.
            if not logs or "loss" not in logs:
                return
            step, max_steps = int(state.global_step), int(state.max_steps)
            entry: dict[str, Any] = {"step": step, "max_steps": max_steps, "fraction": step / max(max_steps, 1)}
            entry.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and k not in entry})
            history.append(entry)
            if progress is not None:
                progress(dict(entry))

    return ProgressCallback()


def check_reference_adapter(model) -> None:  # model: PeftModel
    """Fail loudly unless TRL set up the frozen "ref" copy of the starting adapter.

    TRL 1.16's trainers, given a PeftModel with a trained "default" adapter, no `peft_config` and
    no `ref_model`, add a second adapter "ref" with a copy of the starting weights and compute the
    reference log-probs under it with no grad. "ref" is never active in the policy's forward pass
    and is left out of the optimiser, so the reference is the policy that is serving now: what an
    iterative loop wants (each round anchored to the policy the labels came from), for the cost of
    one extra set of LoRA weights instead of a second base model. Passing `peft_config` instead
    would make the bare base model the reference, anchoring every round to version 1.
    """
    if REF_ADAPTER not in model.peft_config:
        raise RuntimeError(
            f"TRL did not add the {REF_ADAPTER!r} reference adapter; the reference would be the bare base model"
        )
    ref_params = [(n, p) for n, p in model.named_parameters() if f".{REF_ADAPTER}." in n]
    default_params = dict((n, p) for n, p in model.named_parameters() if ".default." in n)
    if not ref_params or any(p.requires_grad for _, p in ref_params):
        raise RuntimeError(f"the {REF_ADAPTER!r} reference adapter is missing or trainable")
    for name, param in ref_params:
        source = default_params.get(name.replace(f".{REF_ADAPTER}.", ".default."))
        if source is None or not bool((source.detach() == param.detach()).all()):
            raise RuntimeError(f"reference adapter weight {name} is not a copy of the starting adapter")


def train_quietly(trainer, model, *, reference: bool) -> float:  # trainer: transformers.Trainer
    """Train without printing every log line (a library should not), after checking the
    reference adapter when the trainer uses one; return the training seconds."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if reference:
        check_reference_adapter(model)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def save_adapter(model, out_dir: Path, state_dict: dict[str, Any] | None = None) -> Path:  # model: PeftModel
    """Save only the trained "default" adapter, as vLLM and ``PeftModel.from_pretrained`` expect it:
    every one of its tensors (from `state_dict`, the gathered weights of a sharded model, if given)."""
    from safetensors.torch import load_file

    extra = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(str(out_dir), selected_adapters=["default"], save_embedding_layers=False, **extra)
    missing = [name for name in ADAPTER_FILES if not (out_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"saving the adapter to {out_dir} did not write {missing}")
    expected = sum(1 for name, _ in model.named_parameters() if ".default." in name)
    saved = len(load_file(str(out_dir / "adapter_model.safetensors")))
    if saved != expected:  # e.g. wrapped modules whose names peft no longer recognises: it saves nothing
        raise RuntimeError(f"saving the adapter to {out_dir} wrote {saved} of its {expected} tensors")
    return out_dir


def save_trained(trainer, out: Path, history: list[dict[str, Any]], what: str) -> tuple[dict, dict]:
    """Save the trained adapter; return the first and last step logs."""
    if not history:
        raise RuntimeError(f"{what} training logged no step; check max_steps and the data")
    # sharded (FSDP): every process takes part in gathering the whole weights, which process 0 gets
    state = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if trainer.is_world_process_zero():  # with several processes (training.launch), one writes
        save_adapter(trainer.accelerator.unwrap_model(trainer.model), out, state)
    trainer.accelerator.wait_for_everyone()
    return history[0], history[-1]


def sharding_used(trainer) -> str:  # trainer: transformers.Trainer
    """How the run's processes held the model: "fsdp" (sharded), "ddp" (a copy each), or "none"
    (one process). Read from the trainer, so a setting that was silently ignored shows."""
    if trainer.is_fsdp_enabled:
        return "fsdp"
    return "ddp" if trainer.accelerator.num_processes > 1 else "none"


def adapter_rank(adapter_path: str | Path) -> int:
    """The LoRA rank ``r`` an adapter folder was saved with."""
    import json

    return int(json.loads((Path(adapter_path) / "adapter_config.json").read_text())["r"])


def resize_adapter(adapter_path: str | Path, out_dir: str | Path, rank: int, *, seed: int = 0) -> Path:
    """Write a copy of a LoRA adapter with rank ``rank`` into ``out_dir`` and return ``out_dir``.

    Each module's update ``ΔW = (alpha / r) · B A`` is kept: the new factors come from the SVD of
    ``B A`` (``B' = U √S``, ``A' = √S Vᵀ``), and ``lora_alpha`` is scaled with the rank so that
    ``alpha / r`` stays the same. A larger rank keeps ΔW exactly; its extra directions start as a
    new LoRA does (``A`` small and random, ``B`` zero), so they can train. A smaller rank keeps the
    best rank-``rank`` approximation of ΔW (Eckart-Young). Adapters with per-module ranks or alphas
    (``rank_pattern``, ``alpha_pattern``) or rsLoRA are refused.
    """
    import json
    import math

    import torch
    from safetensors.torch import load_file, save_file

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r} must be a positive integer")
    source, out = check_folders(adapter_path, out_dir)
    config = json.loads((source / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_rslora"):
        raise ValueError(f"{source}: adapters with rank_pattern, alpha_pattern or rsLoRA cannot be resized")
    old_rank = int(config["r"])
    weights = load_file(str(source / "adapter_model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    resized: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if ".lora_B." in name:
            continue
        if ".lora_A." not in name:
            resized[name] = tensor
            continue
        b_name = name.replace(".lora_A.", ".lora_B.")
        a, b = tensor.float(), weights[b_name].float()  # (r, in), (out, r)
        u, s, vh = torch.linalg.svd(b @ a, full_matrices=False)
        keep = min(rank, s.shape[0], old_rank)
        root = s[:keep].sqrt()
        new_a = torch.zeros(rank, a.shape[1])
        new_b = torch.zeros(b.shape[0], rank)
        new_a[:keep] = root.unsqueeze(1) * vh[:keep]
        new_b[:, :keep] = u[:, :keep] * root
        if rank > keep:  # fresh directions, initialised as peft initialises lora_A
            bound = 1 / math.sqrt(a.shape[1])
            new_a[keep:] = (torch.rand(rank - keep, a.shape[1], generator=generator) * 2 - 1) * bound
        resized[name] = new_a.to(tensor.dtype).contiguous()
        resized[b_name] = new_b.to(weights[b_name].dtype).contiguous()
    alpha = config["lora_alpha"] * rank / old_rank
    config["lora_alpha"] = int(alpha) if float(alpha).is_integer() else alpha
    config["r"] = rank
    out.mkdir(parents=True, exist_ok=True)
    save_file(resized, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out
