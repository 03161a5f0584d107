"""The acquire stage on a local Ray instance (`--config.engine=ray`): the streaming Ray Data
pipeline (two generator actors, one of them killed while it works) and the shard
actors (two, one killed with `ray.kill`) give the same features as the in-process run, with
no span lost or acquired twice; a killed driver reruns to the same features."""

import glob
import json
import os
import threading
import time

import numpy as np
import pytest
import ray
from ray._private import state as ray_state
from ray._private import worker as ray_worker
from conftest import assert_same_features

from axk.features import parts
from axk.features import pipeline
from axk.features import ray_engine
from axk.features import retrieval
from axk.features import shards
from test_features import _config as features_config_of
from axk.features import tiny


def _config(models, **overrides):
  """Generation on the tiny models over pitch dev and test of the shipped sample, one span
  per part file (so that a worker has written some parts when it is killed), every model
  call on one clip or text (so that the in-process and the Ray runs batch alike)."""
  return features_config_of(models, "", **{
      "source": "generation", "data.splits": ("dev",), "batch_size": 1,
      "generation.spans_per_call": 1, "generation.tau.pitch": -0.2, "clap.batch_size": 1,
      "ast.batch_size": 1, **overrides})


# The streaming pipeline on two CPUs: two generator actors, one CLAP and one AST actor, one
# clip per generator call.
STREAM = {"engine": "ray", "ray.workers": 2, "ray.score.workers": 1, "ray.embed.workers": 1,
          "ray.generate.cpus": 0.25, "ray.score.cpus": 0.25, "ray.embed.cpus": 0.25,
          "ray.decode.cpus": 0.25, "ray.generate.batch_size": 1}


@pytest.fixture(scope="module")
def local_ray():
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={
      "env_vars": {"PYTHONPATH": ray_engine._package_path()}})  # pylint: disable=protected-access
  yield
  ray.shutdown()


def _same(a_dir: str, b_dir: str) -> None:
  for split in ("dev",):
    assert_same_features(*(shards.load_features(d, "pitch", split) for d in (a_dir, b_dir)))
  with open(os.path.join(a_dir, shards.ACQUISITIONS), encoding="utf-8") as f:
    first = f.read()
  with open(os.path.join(b_dir, shards.ACQUISITIONS), encoding="utf-8") as f:
    assert f.read() == first


@pytest.fixture(scope="module")
def local(models, tmp_path_factory, torch_one_thread):
  """The in-process run's features folder (one torch thread, as each Ray worker)."""
  del torch_one_thread
  return pipeline.run(_config(models), str(tmp_path_factory.mktemp("local")))["generation"]


def _parts_keys(folder: str) -> list[str]:
  return [str(t) for path in parts.part_files(folder)
          for t in parts.load_npz(path, "part file")["text"]]


@pytest.mark.slow
def test_streaming_pipeline_with_a_generator_actor_killed_equals_the_in_process_run(
    models, local, local_ray, tmp_path):
  workdir = str(tmp_path / "stream")
  result = {}
  runner = threading.Thread(target=lambda: result.update(pipeline.run(
      _config(models, **STREAM), workdir)))
  runner.start()
  # Kill a generator actor once clips are in the cache and spans are still undecided. Ray
  # Data's actors have no names, so the kill is `ray.kill`'s own call, by actor id.
  sidecars = os.path.join(workdir, "cache", "clips", "*", "*.json")
  deadline = time.time() + 300
  while len(glob.glob(sidecars)) < 3 and runner.is_alive() and time.time() < deadline:
    time.sleep(0.05)
  generators = [a for a in ray_state.actors().values()
                if "Generate" in a["ActorClassName"] and a["State"] == "ALIVE"]
  assert generators and runner.is_alive()
  killed_at = len(glob.glob(sidecars))
  ray_worker.global_worker.core_worker.kill_actor(
      ray.ActorID(bytes.fromhex(generators[0]["ActorID"])), False)
  runner.join(timeout=600)
  assert not runner.is_alive()
  assert killed_at < len(glob.glob(sidecars)), "the kill came while clips were still to draw"
  with open(os.path.join(local, shards.ACQUISITIONS), encoding="utf-8") as f:
    tried = [len(json.loads(line)["scores"]) for line in f]
  assert 1 in tried and 2 in tried, "some spans needed a second round of draws"
  after = [a for a in ray_state.actors().values() if a["ActorID"] == generators[0]["ActorID"]]
  assert after and after[0]["NumRestarts"] >= 1, "the killed actor was restarted by Ray"
  _same(local, result["generation"])
  folder = glob.glob(os.path.join(workdir, "parts", "generation-*"))[0]
  keys = _parts_keys(folder)
  assert len(keys) == len(set(keys)) == shards.read_manifest(local)["counts"]["distinct_spans"]


def test_streaming_pipeline_that_cannot_fit_the_local_instance_says_so_in_one_line(
    models, local_ray, tmp_path):
  with pytest.raises(ValueError, match=r"^the draw pipeline needs 5 CPUs \(ray.generate: 2 x "
                     r"1.0 \+ ray.decode: 1 x 1.0 \+ ray.score: 2 x 1.0\) and this Ray "
                     r"instance has 2: lower --config.ray.<stage>.workers or .cpus, or raise "
                     r"--config.ray.num_cpus$"):
    pipeline.run(_config(models, engine="ray"), str(tmp_path / "w"))


@pytest.mark.slow
def test_two_shard_actors_one_killed_equal_the_in_process_run(models, local, local_ray,
                                                               tmp_path):
  workdir = str(tmp_path / "ray")
  result = {}
  runner = threading.Thread(target=lambda: result.update(pipeline.run(
      _config(models, engine="ray", **{"ray.workers": 2, "ray.pipeline": "shards"}), workdir)))
  runner.start()
  # Kill worker 0 once it has written a part and before it has written them all.
  parts_glob = os.path.join(workdir, "parts", "*", "shard-00000-of-00002", "part-*.npz")
  deadline = time.time() + 120
  while not glob.glob(parts_glob) and runner.is_alive() and time.time() < deadline:
    time.sleep(0.05)
  written_at_kill = len(glob.glob(parts_glob))
  ray.kill(ray.get_actor(f"{ray_engine.ACTOR_PREFIX}0"), no_restart=False)
  runner.join(timeout=300)
  assert not runner.is_alive()
  folder = os.path.dirname(os.path.dirname(glob.glob(parts_glob)[0]))
  written = len(glob.glob(parts_glob))
  assert 1 <= written_at_kill < written, "the kill came while worker 0 had spans to go"
  _same(local, result["generation"])
  # Every distinct span is in exactly one part file: none lost, none acquired twice.
  keys = _parts_keys(folder)
  assert len(keys) == len(set(keys)) == shards.read_manifest(local)["counts"]["distinct_spans"]


@pytest.mark.slow
def test_retrieval_with_its_database_embedded_on_ray_data_equals_the_in_process_run(
    models, local_ray, torch_one_thread, tmp_path, monkeypatch):
  """Retrieval on Ray: the database's CLAP chunks made by Ray Data's decoder and CLAP actors
  (one clip short of two chunks, an undecodable clip among them), the acquisitions by two
  shard actors; chunks and features equal the in-process run's."""
  del torch_one_thread
  db = tiny.write_synthetic_database(str(tmp_path / "db"), 6)
  with open(os.path.join(db, "broken.wav"), "wb") as f:
    f.write(b"RIFF....WAVEnot audio")
  c = {"source": "retrieval", "clap.batch_size": 1, "ast.batch_size": 1,
       "database.chunk_size": 4, "ray.workers": 2, "ray.decode.cpus": 0.25,
       "ray.score.cpus": 0.25, "ray.score.workers": 1, "ray.cpus_per_worker": 0.25}
  local_run = pipeline.run(features_config_of(models, db, **c), str(tmp_path / "local"))

  def refuse(*args):
    raise AssertionError(f"the driver decoded database clip {args[1]}")

  monkeypatch.setattr(retrieval.AudioDatabase, "load", refuse)  # Only Ray's workers decode.
  on_ray = pipeline.run(features_config_of(models, db, engine="ray", **c), str(tmp_path / "ray"))
  chunks = [sorted(glob.glob(str(tmp_path / w / "cache" / "**" / "chunk-*.npz"),
                             recursive=True)) for w in ("local", "ray")]
  assert len(chunks[0]) == len(chunks[1]) == 2
  invalid = 0
  for a, b in zip(*chunks):
    x, y = parts.load_npz(a, "chunk"), parts.load_npz(b, "chunk")
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
    invalid += int((~x["valid"]).sum())
  assert invalid == 1
  assert_same_features(*(shards.load_features(r["retrieval"], "pitch", "dev")
                         for r in (local_run, on_ray)))


def test_ray_engine_needs_the_whole_run(models, tmp_path):
  with pytest.raises(ValueError, match="engine=ray runs every stage"):
    pipeline.run(_config(models, engine="ray", stage="acquire"), str(tmp_path / "w"))


@pytest.mark.e2e
@pytest.mark.slow
def test_a_killed_driver_reruns_to_the_same_features(models, local, tmp_path):
  """The driver (`python -m axk.main`, which starts its own local Ray) killed with its whole
  process group once clips are in the cache; the same command again finishes the run, equal to the
  in-process one."""
  import signal
  import subprocess
  import sys
  workdir = tmp_path / "ray"
  c = _config(models)
  flags = [f"--config.models.{m}={models[k]}" for m, k in
           (("clap", "clap"), ("ast", "ast"), ("generator", "generator"))]
  command = [sys.executable, "-m", "axk.main", "--config=configs/features.py:smoke",
             f"--workdir={workdir}", "--config.models.tiny=False", *flags,
             "--config.source=generation", "--config.data.tasks=('pitch',)",
             "--config.data.splits=('dev',)", "--config.batch_size=1",
             "--config.ast.token_layout=time", "--config.ast.num_audio_tokens=3",
             f"--config.generation.steps={c.generation.steps}",
             f"--config.generation.seconds={c.generation.seconds}",
             f"--config.generation.n={c.generation.n}", "--config.generation.spans_per_call=1",
             "--config.generation.tau.pitch=-0.2", "--config.clap.batch_size=1",
             "--config.ast.batch_size=1", "--config.torch_threads=1",
             *(f"--config.{k}={v}" for k, v in STREAM.items()),
             "--config.ray.num_cpus=2", "--config.jax_cache_dir=none"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen(command, cwd=root, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  sidecars = str(workdir / "cache" / "clips" / "*" / "*.json")
  deadline = time.time() + 300
  while len(glob.glob(sidecars)) < 3 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the driver ended before it could be killed"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  features = workdir / os.path.basename(local)
  assert not features.exists()
  done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  _same(local, str(features))
