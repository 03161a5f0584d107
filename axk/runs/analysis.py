"""What the audio did, measured at the end of a run and by predict: forward passes of a
masked-word model with and without its span audio, and the gate read-out.

    step = analysis.step(model, choice_ids)            # jitted; outputs + gates
    out = analysis.run_rows(step, params, arrays, batch_size=64)
    silent = analysis.run_rows(step, params, method.without_audio(arrays, model), 64)

`outputs_of` is what scoring reads from masked-LM logits; `step` adds, for methods whose
module sows a fusion gate (`intermediates/fusion/gate` and `fused`), the gate per token and
where the fusion acted. `audio_effect` writes both into a split's per-example answers, for
`predictions/*.jsonl` and `report.html`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from axk.train import data as data_lib


def outputs_of(logits, batch, choice_ids: Sequence[int]) -> dict:
  """What scoring reads from masked-LM logits at the masks [batch, masks, vocab]: `argmax`,
  `labels` (-1 past each row's masks), `label_logprob` (sum over the row's pieces) and, for
  closed-answer tasks (pitch), `choice_logits` of `choice_ids` at the first mask."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  labels = jnp.take_along_axis(batch["mlm_labels"], batch["mask_positions"], axis=1)
  valid = jnp.arange(labels.shape[1])[None, :] < batch["mask_count"][:, None]
  label_logp = jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], -1)[..., 0]
  out = {"argmax": jnp.where(valid, logits.argmax(-1), -1).astype(jnp.int32),
         "labels": jnp.where(valid, labels, -1).astype(jnp.int32),
         "label_logprob": jnp.sum(jnp.where(valid, label_logp, 0.0), axis=1)}
  if choice_ids:
    out["choice_logits"] = logits[:, 0, jnp.asarray(choice_ids)]
  return out


def step(model, choice_ids: Sequence[int]):
  """A jitted `(params, batch) -> outputs` of `model` at the masks, with the fusion's sown
  `gate` [batch, length] and `fused` [batch, length] where the module sows them."""
  choice_ids = tuple(int(i) for i in choice_ids)

  @jax.jit
  def apply(params, batch):
    out, state = model.apply({"params": params}, batch, positions=batch["mask_positions"],
                             deterministic=True, mutable=["intermediates"])
    res = outputs_of(out["logits"], batch, choice_ids)
    fusion = state.get("intermediates", {}).get("fusion", {})
    if "gate" in fusion:
      res["gate"], res["fused"] = fusion["gate"][0], fusion["fused"][0]
    return res

  return apply


def batch_of(arrays: Mapping, inputs: Sequence[str], index=None) -> dict:
  """The model's `inputs` plus what scoring reads, as arrays (rows `index`, default all)."""
  keys = [*inputs, "mask_positions", "mlm_labels", "mask_count"]
  pick = (lambda v: v) if index is None else (lambda v: v[index])
  return {k: jnp.asarray(pick(arrays[k])) for k in dict.fromkeys(keys) if k in arrays}


num_rows = data_lib.num_rows


def run_rows(apply, params, arrays: Mapping, inputs: Sequence[str], batch_size: int
             ) -> dict[str, np.ndarray]:
  """`apply` over every row of `arrays`, in order, on this process alone, in fixed-size
  batches (the last padded with row 0, so one shape compiles)."""
  n = data_lib.num_rows(arrays)
  size = max(1, min(int(batch_size), n))
  chunks = []
  for start in range(0, n, size):
    index = np.arange(start, start + size)
    index[index >= n] = 0
    out = jax.device_get(apply(params, batch_of(arrays, inputs, index)))
    chunks.append({k: np.asarray(v)[:min(size, n - start)] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def audio_effect(answers: Sequence[dict], examples, arrays: Mapping, with_audio: Mapping,
                 silent_answers: tuple[list, list], *, lora_gate: bool) -> None:
  """Adds to each answer (paper protocol, one row per example): its sentence, `with_audio`,
  `predicted_without_audio` / `correct_without_audio` (`silent_answers`: predictions and
  correctness of the pass with no span audio), `lora_gate` (methods with a LoRA gate) and
  `gate` ([start, end, value] of every token a fusion acted on, from `with_audio`)."""
  predicted, correct = silent_answers
  for i, (a, e) in enumerate(zip(answers, examples)):
    a.update(sentence=e.sentence, with_audio=bool(arrays["span_has_audio"][i].any()),
             predicted_without_audio=predicted[i], correct_without_audio=bool(correct[i]))
    if lora_gate:
      a["lora_gate"] = float(arrays["lora_gate"][i])
    if "gate" in with_audio:
      a["gate"] = [[int(arrays["offsets"][i, t, 0]), int(arrays["offsets"][i, t, 1]),
                    round(float(with_audio["gate"][i, t]), 4)]
                   for t in np.flatnonzero(with_audio["fused"][i])]
