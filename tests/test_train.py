"""The training system on the span detector's `:smoke` config: exports, sharding, resume."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from axk.runs import span as span_lib
from axk.train import checkpoint as ckpt_lib
from axk.train import data as data_lib
from axk.train import loop
from axk.train import sharding
from axk.utils.tree import flatten
from configs import span as span_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(**train):
  c = span_config.get_config("smoke")
  c.train.update(train)
  return c


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("span_smoke"))
  results = span_lib.run(smoke_config(), workdir)
  return workdir, results


def reference_spans(model, tokenizer, sentence):
  """Spans from transformers in PyTorch, computed here from scratch."""
  enc = tokenizer(sentence, return_offsets_mapping=True, return_tensors="pt")
  offsets = enc.pop("offset_mapping")[0].tolist()
  with torch.no_grad():
    labels = model(**enc).logits[0].argmax(-1).tolist()
  special = set(tokenizer.all_special_ids)
  ids = enc["input_ids"][0].tolist()
  spans, current = [], None
  for i, (tok, lab) in enumerate(zip(ids, labels)):
    inside = lab == 1 and tok not in special
    if inside and current is None:
      current = [offsets[i][0], offsets[i][1]]
    elif inside:
      current[1] = offsets[i][1]
    elif current is not None:
      spans.append(tuple(current))
      current = None
  if current is not None:
    spans.append(tuple(current))
  # Spans cover whole words: widen each to every word (letters, digits, ' and -) it touches
  # inside, then merge those that overlap.
  words = [m.span() for m in re.finditer(r"[^\W_]+(?:['’_-][^\W_]+)*", sentence)]
  widened = []
  for s, e in (x for x in spans if x[1] > x[0]):
    for ws, we in words:
      if ws < e and s < we:
        s, e = min(s, ws), max(e, we)
    if widened and s <= widened[-1][1]:
      widened[-1] = (widened[-1][0], max(e, widened[-1][1]))
    else:
      widened.append((s, e))
  return [(s, e, sentence[s:e]) for s, e in widened if sentence[s:e].strip()]


@pytest.mark.e2e  # A complete run (`smoke_run`) and what it wrote.
def test_smoke_run_writes_everything(smoke_run):
  workdir, results = smoke_run
  for name in ("config.json", "results.json", "results.md", "metrics.jsonl"):
    assert os.path.exists(os.path.join(workdir, name)), name
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert set(saved) == {"animal", "pitch", "selection", "revisions"}
  assert saved["revisions"]["data"]["revision"] and saved["revisions"]["models"]["model.init"]
  assert {"dev", "test", "wiki", "train"} <= set(saved["animal"])
  assert 0 <= saved["pitch"]["dev"]["token_f1"] <= 100
  # Every split's spans are predicted, train included: later runs train on them.
  data = span_lib.common.load_data(smoke_config(), keep_missing_spans=True)
  for task in ("animal", "pitch"):
    with open(os.path.join(workdir, "predictions", f"{task}_train.jsonl")) as f:
      ids = [json.loads(line)["id"] for line in f]
    assert ids == [e.id for e in data[task]["train"].examples]
  assert os.listdir(os.path.join(workdir, "tensorboard"))


@pytest.mark.e2e  # The export of a complete run (`smoke_run`).
def test_exported_detector_predicts_the_same_spans_in_pytorch(smoke_run):
  workdir, _ = smoke_run
  export = os.path.join(workdir, "export")
  model = transformers.BertForTokenClassification.from_pretrained(
      export, local_files_only=True).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(export)
  compared = nonempty = 0
  for task in ("animal", "pitch"):
    with open(os.path.join(workdir, "predictions", f"{task}_dev.jsonl")) as f:
      for line in f:
        row = json.loads(line)
        ours = [(s["start"], s["end"], s["text"]) for s in row["spans"]]
        assert ours == reference_spans(model, tokenizer, row["sentence"]), row["id"]
        compared += 1
        nonempty += bool(ours)
  assert compared >= 30 and nonempty > 0


def _train_steps(config, workdir, devices, steps):
  task = span_lib.SpanTask(config, workdir)
  trainer = loop.Trainer(config, workdir, task, devices=devices)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, "ckpt"))
  state, _ = trainer.init_state(checkpoints)
  with sharding.activate(trainer.mesh, trainer.rules):
    for step in range(steps):
      batch = sharding.global_batch(trainer.batches[step], trainer.batch_sharding)
      state, _ = trainer.train_step(state, batch)
  return trainer, checkpoints, state


def test_mesh_step_equals_single_device_and_checkpoint_reshards(tmp_path):
  config = smoke_config()
  config.mesh.shape = (("data", 4), ("model", 2))
  trainer8, ckpt8, state8 = _train_steps(config, str(tmp_path / "a"), jax.devices(), 2)
  spec = state8["params"]["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"].sharding
  assert spec.spec == jax.sharding.PartitionSpec(None, "model", None)  # really sharded
  config1 = smoke_config()
  config1.mesh.shape = (("data", 1), ("model", 1))
  trainer1, _, state1 = _train_steps(config1, str(tmp_path / "b"), jax.devices()[:1], 2)
  flat8, flat1 = flatten(jax.device_get(state8["params"])), flatten(jax.device_get(state1["params"]))
  for k in flat1:
    np.testing.assert_allclose(flat8[k], flat1[k], atol=1e-5, err_msg=k)
  # Written on the 4x2 mesh, restored onto one device.
  ckpt8.save(2, state8)
  restored = ckpt8.restore(trainer1.abstract_state)
  leaf = restored["params"]["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
  assert len(leaf.sharding.device_set) == 1
  for k, v in flatten(jax.device_get(restored["params"])).items():
    np.testing.assert_array_equal(v, flat8[k], err_msg=k)


def _final_params(workdir):
  return load_file(os.path.join(workdir, "export", "model.safetensors"))


@pytest.mark.e2e  # Complete runs: stopped and resumed, against `smoke_run`.
def test_interrupted_run_resumes_to_the_same_parameters(smoke_run, tmp_path, monkeypatch):
  full_dir, _ = smoke_run
  resumed_dir = str(tmp_path / "resumed")
  # SIGTERM arrives while the batch of step 7 (mid-epoch) is being fetched.
  original = data_lib.TrainBatches.__getitem__

  def getitem(self, step):
    if step == 7:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, step)

  monkeypatch.setattr(data_lib.TrainBatches, "__getitem__", getitem)
  assert span_lib.run(smoke_config(), resumed_dir) == {}
  assert not os.path.exists(os.path.join(resumed_dir, "results.json"))
  steps = [int(d) for d in os.listdir(os.path.join(resumed_dir, "checkpoints")) if d.isdigit()]
  assert max(steps) == 8
  monkeypatch.setattr(data_lib.TrainBatches, "__getitem__", original)
  span_lib.run(smoke_config(), resumed_dir)  # The same command again continues at step 8.
  full, resumed = _final_params(full_dir), _final_params(resumed_dir)
  assert set(full) == set(resumed)
  for k in full:
    np.testing.assert_allclose(resumed[k], full[k], atol=1e-6, err_msg=k)


def test_non_finite_loss_stops_with_step_and_example_ids(tmp_path, monkeypatch):
  original_loss, original_getitem = span_lib.SpanTask.loss, data_lib.TrainBatches.__getitem__

  def getitem(self, step):  # Marks the batches of steps >= 4.
    batch = original_getitem(self, step)
    batch["poison"] = np.full(len(batch["input_ids"]), step >= 4, np.int32)
    return batch

  def loss(self, params, batch, rng):
    value, aux = original_loss(self, params, batch, rng)
    return value * jax.numpy.where(batch["poison"].max() > 0, np.inf, 1.0), aux

  config = smoke_config(eval_every=3)
  task = span_lib.SpanTask(config, str(tmp_path))
  monkeypatch.setattr(span_lib.SpanTask, "loss", loss)
  monkeypatch.setattr(data_lib.TrainBatches, "__getitem__", getitem)
  expected_ids = [task.train_ids[i] for i in original_getitem(task_batches(task, config), 4)[
      "example_index"]]
  with pytest.raises(loop.NonFiniteError, match=r"Step 4: loss=inf") as err:
    loop.train_and_evaluate(config, str(tmp_path), task)
  assert str(expected_ids) in str(err.value)
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [3]  # The last good checkpoint, nothing after it.


def test_nan_between_syncs_stops_at_its_step_without_a_later_checkpoint(tmp_path, monkeypatch):
  """Asynchronous loop: scalars are fetched only at sync points (here the checkpoints every
  4 steps), yet a NaN at step 5 still names step 5 and its examples, and the checkpoint due
  at step 8 is never written."""
  original_loss, original_getitem = span_lib.SpanTask.loss, data_lib.TrainBatches.__getitem__

  def getitem(self, step):
    batch = original_getitem(self, step)
    batch["poison"] = np.full(len(batch["input_ids"]), step == 5, np.int32)
    return batch

  def loss(self, params, batch, rng):
    value, aux = original_loss(self, params, batch, rng)
    return value + jax.numpy.where(batch["poison"].max() > 0, np.nan, 0.0), aux

  fetched = []  # Steps per fetch of train scalars.
  original_flush = loop._FiniteChecks.flush

  def flush(self):
    if self.pending:
      fetched.append([step for step, _, _ in self.pending])
    return original_flush(self)

  config = smoke_config(eval_every=100, checkpoint_every=4, log_every=100)
  task = span_lib.SpanTask(config, str(tmp_path))
  monkeypatch.setattr(span_lib.SpanTask, "loss", loss)
  monkeypatch.setattr(data_lib.TrainBatches, "__getitem__", getitem)
  monkeypatch.setattr(loop._FiniteChecks, "flush", flush)
  expected_ids = [task.train_ids[i] for i in original_getitem(task_batches(task, config), 5)[
      "example_index"]]
  with pytest.raises(loop.NonFiniteError) as err:
    loop.train_and_evaluate(config, str(tmp_path), task)
  message = str(err.value)
  assert message.startswith("Step 5: loss=nan") and "\n" not in message
  assert str(expected_ids) in message
  assert "the last good checkpoint is step 4, nothing was saved after it" in message
  assert fetched == [[0, 1, 2, 3], [4, 5, 6, 7]]  # Two fetches for eight steps.
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [4]


def task_batches(task, config):
  return data_lib.TrainBatches(task.train_arrays, batch_size=config.train.batch_size,
                               epochs=config.train.epochs, seed=config.seed)


@pytest.mark.e2e
@pytest.mark.parametrize("args, message", [
    (["--config=configs/span.py:nosuch"], "unknown config variant 'nosuch'"),
    (["--config=configs/span.py:smoke", "--config.train.batch_size=-2"],
     "--config.train.batch_size=-2: must be a positive integer"),
    (["--config=configs/span.py:smoke", "--config.model.init=/no/such/model"],
     "--config.model.init=/no/such/model: no such directory"),
])
def test_bad_config_fails_before_work_with_one_line(args, message, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "axk.main", f"--workdir={tmp_path}/w", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines[-1] == f"error: {message}." or lines[-1].startswith(f"error: {message}")
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.mark.e2e  # A complete run: its selection, export and results files.
def test_the_best_dev_step_is_selected_and_its_parameters_used(tmp_path):
  """A dev metric that peaks at the second evaluation (step 8 of 19): the final parameters
  are step 8's, bit for bit, and results.json agrees with metrics.jsonl."""
  import collections
  import orbax.checkpoint as ocp
  config = smoke_config(eval_every=4)  # evaluations at steps 4, 8, 12, 16 and the end
  workdir = str(tmp_path / "run")
  task = span_lib.SpanTask(config, workdir)
  real_evaluate, real_finish = task.evaluate, task.finish
  calls = collections.Counter()
  schedule = {1: 50.0, 2: 70.0, 3: 60.0}  # later evaluations: 40

  def evaluate(key, views, outputs):
    metrics = dict(real_evaluate(key, views, outputs))
    if key.endswith("/dev"):
      calls[key] += 1
      metrics["token_f1"] = schedule.get(calls[key], 40.0)
    return metrics

  final = {}

  def finish(params, out, outputs):
    final["params"] = params
    return real_finish(params, out, outputs)

  task.evaluate, task.finish = evaluate, finish
  loop.train_and_evaluate(config, workdir, task)

  logged = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      values = [v for k, v in row.items() if k.endswith("/dev/token_f1")
                and not k.startswith("final/")]
      if values:
        logged[row["step"]] = float(np.mean(values))
  assert logged == {4: 50.0, 8: 70.0, 12: 60.0, 16: 40.0}
  best = max(logged, key=lambda s: (logged[s], -s))
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved["selection"] == {"step": best, "total_steps": 19, "metric": "mean/dev/token_f1",
                                "value": logged[best], "select_best": True}
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  restored = manager.restore(best, args=ocp.args.StandardRestore())["params"]
  flat_final, flat_best = flatten(final["params"]), flatten(jax.device_get(restored))
  assert flat_final.keys() == flat_best.keys()
  for k in flat_best:
    np.testing.assert_array_equal(np.asarray(flat_final[k]), np.asarray(flat_best[k]),
                                  err_msg=k)
  md = open(os.path.join(workdir, "results.md")).read()
  assert "Parameters from step 8 of 19 (best on mean/dev/token_f1 = 70)" in md


def test_schedules_against_hand_computed_rates():
  """100 steps at peak 1e-3. Cosine with 10% warm-up: 0 at step 0, 5e-4 at step 5, the peak
  at 10, then 1e-3 * (1 + cos(pi * (t - 10) / 90)) / 2. Constant: the peak from step 0, or
  after the same linear warm-up."""
  from axk.train import optim
  config = span_config.get_config("smoke").train
  config.update(learning_rate=1e-3, warmup_ratio=0.1, schedule="cosine")
  lr = optim.schedule(config, 100)
  for step, want in ((0, 0.0), (5, 5e-4), (10, 1e-3), (55, 5e-4), (100, 0.0),
                     (40, 1e-3 * (1 + np.cos(np.pi / 3)) / 2)):
    assert float(lr(step)) == pytest.approx(want, abs=1e-9), step
  config.update(schedule="constant")
  lr = optim.schedule(config, 100)
  assert [float(lr(s)) for s in (0, 5, 10, 99)] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
  config.update(warmup_ratio=0.0)
  lr = optim.schedule(config, 100)
  assert [float(lr(s)) for s in (0, 50, 99)] == pytest.approx([1e-3] * 3)


def test_span_detector_optimizer_is_the_published_one():
  """transformers' AdamW(lr=1e-5) with no scheduler and no clipping: one step from a zero
  gradient leaves a weight unchanged (no decay); a gradient of 1e6 on one weight moves it by
  lr * g / (|g| + eps) = 1e-5, and the rate is 1e-5 at every step. The `cosine` modifier decays weights: w * (1 - lr(1) * 0.01) after step 1."""
  import jax.numpy as jnp
  from axk.train import optim
  c = span_config.get_config()
  assert (c.train.schedule, c.train.warmup_ratio, c.train.weight_decay, c.train.clip_norm,
          c.train.eps, c.train.learning_rate) == ("constant", 0.0, 0.0, 0.0, 1e-6, 1e-5)
  tx, lr = optim.make(c.train, 10)
  assert [float(lr(s)) for s in (0, 9)] == pytest.approx([1e-5, 1e-5])
  params = {"w/kernel": jnp.array([2.0, 3.0])}
  updates, _ = tx.update({"w/kernel": jnp.array([0.0, 1e6])}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w/kernel"]), [0.0, -1e-5], rtol=1e-5)
  cosine = span_config.get_config("cosine").train
  assert (cosine.schedule, cosine.weight_decay, cosine.clip_norm) == ("cosine", 0.01, 1.0)
  tx, lr = optim.make(cosine, 10)
  state = tx.init(params)
  zero = {"w/kernel": jnp.zeros(2)}
  _, state = tx.update(zero, state, params)  # step 0: the warm-up's rate is 0
  updates, _ = tx.update(zero, state, params)
  np.testing.assert_allclose(np.asarray(updates["w/kernel"]),
                             -float(lr(1)) * 0.01 * np.array([2.0, 3.0]), rtol=1e-5)


def test_lr_scales_multiply_the_rate_of_the_paths_they_name():
  """AdamW at 1e-3, constant, no clipping, weight decay 0.1: the first step moves a weight
  by -lr * (g / (|g| + eps) + wd * w); `train.lr_scales` (("audio_.*", 0.1),) makes that a
  tenth on `audio_adapter/...` alone, decay included, and the first matching pair wins."""
  import jax.numpy as jnp
  from axk.train import optim
  c = span_config.get_config().train
  c.update(learning_rate=1e-3, weight_decay=0.1, eps=1e-8, clip_norm=0.0)
  c.lr_scales = (("audio_.*", 0.1), ("audio_adapter/.*", 3.0))
  tx, _ = optim.make(c, 10)
  params = {"audio_adapter/fc1/kernel": jnp.array([2.0, -1.0]),
            "lora/q/kernel": jnp.array([2.0, -1.0])}
  grads = {k: jnp.array([4.0, -0.5]) for k in params}
  updates, _ = tx.update(grads, tx.init(params), params)
  full = -1e-3 * (np.array([1.0, -1.0]) + 0.1 * np.array([2.0, -1.0]))
  np.testing.assert_allclose(np.asarray(updates["lora/q/kernel"]), full, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["audio_adapter/fc1/kernel"]), 0.1 * full,
                             rtol=1e-5)
  c.lr_scales = (("audio_.*", -1.0),)
  with pytest.raises(ValueError, match=r"train.lr_scales=.*factor >= 0"):
    optim.make(c, 10)
