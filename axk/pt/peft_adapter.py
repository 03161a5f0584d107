"""The LoRA subtree written as a PEFT adapter by PEFT itself.

`write_adapter` builds the exported `BertForMaskedLM` (or `RobertaForMaskedLM`), wraps it with `peft.get_peft_model`
and a `LoraConfig` that records the base model (`base_model_name_or_path`), loads the LoRA
tensors with `set_peft_model_state_dict` (refusing any missing or unexpected name), and
saves with `save_pretrained`; so `adapter_config.json` is whatever this PEFT version writes,
and `PeftModel.from_pretrained(base, adapter_dir)` works with the base read from it:

    config = peft.PeftConfig.from_pretrained(adapter_dir)
    base = transformers.AutoModelForMaskedLM.from_pretrained(config.base_model_name_or_path)
    model = peft.PeftModel.from_pretrained(base, adapter_dir)

Training never imports torch. The export calls `write_adapter`, which runs the PEFT part in
a child process (`python -m axk.pt.peft_adapter`): on accelerators, jax's and torch's wheels
ship their own CUDA libraries (cuDNN, NCCL) in different versions, and loading both into the
training process can clash; a child also keeps torch's memory out of the training process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Mapping, Sequence

import numpy as np

from axk.utils import files


class AdapterError(RuntimeError):
  """PEFT refused the adapter (names that do not fit the base model)."""


def lora_config_dict(rank: int, alpha: float, dropout: float, target_modules: Sequence[str],
                     base_model_name_or_path: str) -> dict:
  """The `peft.LoraConfig` arguments of axk's LoRA (no bias, not fan-in-fan-out)."""
  return {"r": int(rank), "lora_alpha": float(alpha), "lora_dropout": float(dropout),
          "target_modules": sorted(target_modules), "bias": "none",
          "base_model_name_or_path": base_model_name_or_path, "inference_mode": True}


def write_adapter(state: Mapping[str, np.ndarray], adapter_dir: str, base_dir: str, *,
                  rank: int, alpha: float, dropout: float, target_modules: Sequence[str],
                  base_model_name_or_path: str | None = None) -> str:
  """Writes `adapter_dir` through PEFT, in a child process.

  Args:
    state: PEFT state dict (`base_model.model....lora_A.weight` / `lora_B.weight`), as
      `axk.hf.convert.lora_to_peft` makes it.
    adapter_dir: output folder.
    base_dir: the exported base model (a transformers `*ForMaskedLM` folder).
    rank, alpha, dropout, target_modules: the LoRA settings.
    base_model_name_or_path: recorded in `adapter_config.json` (default: `base_dir`,
      absolute).

  Returns:
    `adapter_dir`.

  Raises:
    AdapterError: with PEFT's complaint.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  spec = lora_config_dict(rank, alpha, dropout, target_modules,
                          base_model_name_or_path or os.path.abspath(base_dir))
  with tempfile.TemporaryDirectory(prefix="axk-adapter-") as tmp:
    state_file = os.path.join(tmp, "lora.safetensors")
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, state_file)
    command = [sys.executable, "-m", "axk.pt.peft_adapter", f"--state={state_file}",
               f"--base={os.path.abspath(base_dir)}", f"--out={os.path.abspath(adapter_dir)}",
               f"--spec={json.dumps(spec)}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # The child needs no accelerator.
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo)
  if proc.returncode:
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    raise AdapterError(f"writing the PEFT adapter {adapter_dir} failed: "
                       f"{lines[-1] if lines else 'exit ' + str(proc.returncode)}")
  return adapter_dir


def _write_in_process(state_file: str, base_dir: str, out_dir: str, spec: dict) -> None:
  import peft  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  transformers.utils.logging.set_verbosity_error()
  base = transformers.AutoModelForMaskedLM.from_pretrained(base_dir, local_files_only=True)
  model = peft.get_peft_model(base, peft.LoraConfig(**spec))
  state = load_file(state_file)
  result = peft.set_peft_model_state_dict(model, state)
  lora_keys = {k for k in model.state_dict() if "lora_" in k}
  unexpected = [k for k in result.unexpected_keys]
  missing = [k for k in result.missing_keys if k in lora_keys]
  if unexpected or missing or len(state) != len(lora_keys):
    raise AdapterError(f"LoRA tensors do not fit {base_dir}: unexpected {unexpected[:3]}, "
                       f"missing {missing[:3]}, {len(state)} given for {len(lora_keys)}")
  with tempfile.TemporaryDirectory(prefix="axk-peft-") as tmp:
    model.save_pretrained(tmp)
    for name in sorted(os.listdir(tmp)):
      if name == "README.md":  # PEFT's template card; the export has its own.
        continue
      with open(os.path.join(tmp, name), "rb") as f:
        files.write_bytes(os.path.join(out_dir, name), f.read())


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--state", required=True)
  parser.add_argument("--base", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--spec", required=True)
  args = parser.parse_args(argv)
  _write_in_process(args.state, args.base, args.out, json.loads(args.spec))


if __name__ == "__main__":
  main()
