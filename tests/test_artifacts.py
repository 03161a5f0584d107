"""Publishable artifacts: pinned data, model revisions, PEFT adapters written by PEFT, loading
exports by name (PyTorch and JAX), model cards and Hub uploads (offline, at the client's
commit boundary)."""

import hashlib
import io
import json
import pathlib
import shutil
import urllib.error

import flax.linen as nn
import httpx2 as httpx
import huggingface_hub
import jax
import numpy as np
import pytest
import torch

from axk import hub
from axk import provenance
from axk.data import auditorybench as ab
from axk.data import pins
from axk.features import shards
from axk.hf import card as card_lib
from axk.hf import exports
from axk.hf import push as push_lib
from axk.models import audiobert as audiobert_lib
from axk.models import bert as bert_lib
from axk.models import ith as ith_lib
from axk.pt.audiobert import AudioBertTorch
from axk.pt.ith import IthTorch

# The tiny model, batch (rows with 0, 1 and 2 spans, spans without audio) and random
# weights of the model tests.
from test_audio_models import B, CFG, D, L, S, T, batch, randomize  # noqa: E402,F401
REV = "0123456789abcdef0123456789abcdef01234567"


def sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# Pinned data: a fake upstream served from a local folder.
# ------------------------------------------------------------------------------------------


def serve(upstream: pathlib.Path, calls: list):
  """`ab._urlopen` answering raw.githubusercontent URLs from `upstream/<commit>/<path>`."""
  prefix = pins.RAW_URL.format(repository=pins.REPOSITORY, revision="", path="")[:-2]

  def opener(url, timeout):
    calls.append(url)
    assert url.startswith(prefix)
    file = upstream / url[len(prefix) + 1:]
    if not file.exists():
      raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
    return io.BytesIO(file.read_bytes())

  return opener


@pytest.fixture
def upstream(tmp_path, monkeypatch):
  """The sample dataset published at commit REV in the per-task layout, and a pin of it."""
  root = tmp_path / "upstream" / REV / "dataset"
  shutil.copytree(ab.sample_data_dir(), root)
  files = {f"dataset/{p.relative_to(root).as_posix()}": sha(p.read_bytes())
           for p in root.rglob("*.csv")}
  monkeypatch.setitem(pins.PINS, REV, pins.Pin(layout="per_task", files=files))
  calls = []
  monkeypatch.setattr(ab, "_urlopen", serve(tmp_path / "upstream", calls))
  return root, calls


def test_download_at_a_pinned_commit_checks_every_file(upstream, tmp_path):
  root, calls = upstream
  folder = ab.resolve_data_dir("github", tmp_path / "cache", revision=REV)
  assert folder == str(tmp_path / "cache" / REV) and len(calls) == 8
  assert all(f"/HJ-Ok/AudioBERT/{REV}/dataset/" in u for u in calls)
  record = ab.data_revision(folder)
  assert record["revision"] == REV and record["pinned"] and record["source"] == "github"
  assert record["files"]["sound_pitch_comparsion/test.csv"] == sha(
      (root / "sound_pitch_comparsion" / "test.csv").read_bytes())
  # A cached file edited afterwards: refused with its name and both hashes.
  edited = pathlib.Path(folder) / "animal_sound_recognition" / "dev.csv"
  pinned = sha(edited.read_bytes())
  edited.write_bytes(edited.read_bytes() + b"x,y\n")
  with pytest.raises(ab.DataError) as info:
    ab.resolve_data_dir("github", tmp_path / "cache", revision=REV)
  message = str(info.value)
  assert str(edited) in message and pinned in message and sha(edited.read_bytes()) in message


def test_upstream_file_differing_from_the_pin_is_refused_and_not_kept(upstream, tmp_path):
  root, _ = upstream
  changed = root / "sound_pitch_comparsion" / "train.csv"
  pinned = sha(changed.read_bytes())
  changed.write_bytes(changed.read_bytes().replace(b"higher", b"lower", 1))
  with pytest.raises(ab.DataError) as info:
    ab.download(tmp_path / "cache", REV)
  message = str(info.value)
  assert "sound_pitch_comparsion/train.csv" in message
  assert pinned in message and sha(changed.read_bytes()) in message
  assert not (tmp_path / "cache" / REV / "sound_pitch_comparsion" / "train.csv").exists()


def test_unpinned_commit_records_hashes_at_first_download(tmp_path, monkeypatch):
  other = "f" * 40
  shutil.copytree(ab.sample_data_dir(), tmp_path / "upstream" / other / "dataset")
  calls = []
  monkeypatch.setattr(ab, "_urlopen", serve(tmp_path / "upstream", calls))
  folder = ab.download(tmp_path / "cache", other)
  record = json.loads((pathlib.Path(folder) / ab.REVISION_FILE).read_text())
  assert record["revision"] == other and record["pinned"] is False
  assert len(record["files"]) == 8
  (pathlib.Path(folder) / "sound_pitch_comparsion" / "dev.csv").write_text("changed\n")
  with pytest.raises(ab.DataError, match="recorded at its first download"):
    ab.download(tmp_path / "cache", other)


@pytest.mark.parametrize("revision, match", [("dev", "not a 40-hex commit"),
                                             ("abc123", "not a 40-hex commit")])
def test_download_needs_a_commit_or_a_pinned_branch(tmp_path, monkeypatch, revision, match):
  monkeypatch.setattr(ab, "_urlopen", lambda url, timeout: pytest.fail("no download"))
  with pytest.raises(ab.DataError, match=match):
    ab.resolve_data_dir("github", tmp_path, revision=revision)


def test_the_default_main_is_pinned_by_the_shared_copys_content(tmp_path, monkeypatch):
  """The default revision serves the per-task files whose sha256 `PINS["main"]` holds (here:
  the copy in ../shared/auditorybench, hashed independently with hashlib); wiki is left
  out; one changed byte upstream is refused with the file's name and both hashes."""
  shared = pathlib.Path(__file__).resolve().parents[2] / "shared" / "auditorybench"
  if not shared.exists():
    pytest.skip("no ../shared/auditorybench")
  assert pins.DEFAULT_REVISION == "main"
  pin = pins.PINS["main"]
  served = {}
  for path, digest in pin.files.items():
    local = shared / path[len("dataset/"):]
    assert hashlib.sha256(local.read_bytes()).hexdigest() == digest, path
    served[pins.url("main", path)] = local.read_bytes()

  def fake_urlopen(url, timeout):
    if url not in served:
      raise AssertionError(f"asked for {url}")
    return io.BytesIO(served[url])

  monkeypatch.setattr(ab, "_urlopen", fake_urlopen)
  folder = ab.resolve_data_dir("github", tmp_path / "cache")
  assert ab.load_task(folder, "pitch").keys() == {"train", "dev", "test"}
  path = "dataset/sound_pitch_comparsion/dev.csv"
  served[pins.url("main", path)] = served[pins.url("main", path)] + b"\n"
  with pytest.raises(ab.DataError, match=r"sound_pitch_comparsion/dev.csv: sha256 [0-9a-f]{64} "
                     r"differs from the pinned sha256 .* [0-9a-f]{64}"):
    ab.download(tmp_path / "other_cache")


def test_the_one_known_commit_is_pinned_with_every_file():
  pin = pins.PINS["4fc71aee2dd209093614d80dcc0b2428f8c51bf2"]
  assert pin.layout == "flat" and len(pin.files) == 8
  assert all(len(h) == 64 for h in pin.files.values())
  # Its animal train file is its test file, which the loader refuses.
  assert (pin.files["dataset/animal_sound_recognition_train.csv"]
          == pin.files["dataset/animal_sound_recognition_test.csv"])


def test_local_copy_of_a_pinned_commit_is_recognised(upstream, tmp_path):
  root, _ = upstream
  assert ab.data_revision(root)["revision"] == REV
  (root / "sound_pitch_comparsion" / "wiki.csv").unlink()  # no longer that commit's files
  record = ab.data_revision(root)
  assert record["revision"].startswith("sha256:") and not record["pinned"]


def test_features_from_another_data_revision_are_refused():
  manifest = {"format_version": shards.FORMAT_VERSION, "data": {"revision": "a" * 40}}
  shards.check_manifest(manifest, data_revision="a" * 40)
  with pytest.raises(shards.FeaturesMismatch, match="data revision"):
    shards.check_manifest(manifest, data_revision="b" * 40)
  with pytest.raises(shards.FeaturesMismatch, match="unrecorded"):
    shards.check_manifest({"format_version": shards.FORMAT_VERSION}, data_revision="b" * 40)


# ------------------------------------------------------------------------------------------
# Hub revisions and access errors.
# ------------------------------------------------------------------------------------------


def hub_cache(cache: pathlib.Path, repo_id: str, folder: str, revision: str = REV) -> None:
  """`folder` as the snapshot `revision` of `repo_id` in a Hub cache, `refs/main` on it."""
  repo = cache / f"models--{repo_id.replace('/', '--')}"
  shutil.copytree(folder, repo / "snapshots" / revision)
  (repo / "refs").mkdir(parents=True, exist_ok=True)
  (repo / "refs" / "main").write_text(revision)


def test_hub_models_resolve_at_a_revision_and_record_the_commit(tmp_path, monkeypatch):
  model = tmp_path / "model"
  model.mkdir()
  (model / "config.json").write_text("{}")
  hub_cache(tmp_path / "cache", "org/tiny", str(model))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
  path = hub.resolve("org/tiny")
  assert hub.describe("org/tiny", path)["revision"] == REV
  assert hub.resolve(f"org/tiny@{REV}") == path
  described = hub.describe(f"org/tiny@{REV}", path)
  assert described["requested_revision"] == REV and described["source"] == "hub"
  with pytest.raises(hub.ModelNotAvailable, match="hub is not reachable"):
    hub.resolve("org/tiny", revision="c" * 40)
  local = hub.describe(str(model), str(model))
  assert local["source"] == "local" and local["revision"].startswith("sha256:")
  (model / "config.json").write_text('{"changed": 1}')
  assert hub.describe(str(model), str(model))["revision"] != local["revision"]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_hub_download_is_one_line(monkeypatch, status):
  request = httpx.Request("GET", "https://huggingface.co/api/models/x")
  error = huggingface_hub.errors.GatedRepoError(
      "Access to model is restricted", response=httpx.Response(status, request=request))

  def snapshot_download(repo_id, local_files_only=False, **kwargs):
    if local_files_only:
      raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
    raise error

  monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
  monkeypatch.setattr(hub, "offline", lambda: False)
  monkeypatch.setattr(hub, "hub_reachable", lambda: True)
  with pytest.raises(hub.ModelNotAvailable) as info:
    hub.resolve("stabilityai/stable-audio-open-1.0", "models.generator")
  message = str(info.value)
  assert "\n" not in message and f"HTTP {status}" in message
  assert "accept its terms" in message and "huggingface-cli login" in message


# ------------------------------------------------------------------------------------------
# Exports: PEFT adapters, one-pass gating, loading by name.
# ------------------------------------------------------------------------------------------


def torch_inputs(b, names):
  return {k: torch.tensor(b[k]) for k in names}


@pytest.fixture(scope="module")
def audiobert_export(tmp_path_factory):
  module = audiobert_lib.Model(CFG, audio_dim=D, lora_rank=4, lora_alpha=8.0)
  b = batch()
  args = {k: b[k] for k in audiobert_lib.INPUTS}
  params = randomize(nn.meta.unbox(module.init(jax.random.key(0), args)["params"]), 1)
  out = tmp_path_factory.mktemp("audiobert") / "export"
  audiobert_lib.export(jax.device_get(params), module, str(out))
  logits = np.asarray(module.apply({"params": params}, args)["logits"])
  return out, b, logits


def test_peft_adapter_loads_with_the_base_it_records(audiobert_export):
  import peft
  import transformers
  out, b, _ = audiobert_export
  adapter = out / "adapter"
  config = peft.PeftConfig.from_pretrained(str(adapter))
  assert config.base_model_name_or_path == str((out / "base").resolve())
  assert config.r == 4 and config.lora_alpha == 8.0
  base = transformers.BertForMaskedLM.from_pretrained(config.base_model_name_or_path)
  model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
  # Adapter on for every row, no audio: axk's AudioBERT with gate 1 and no audio.
  loaded = exports.load_audiobert(str(out))
  on = dict(b, lora_gate=np.ones(B, np.float32), span_has_audio=np.zeros((B, S), np.int32))
  ours = np.asarray(loaded(**on))
  with torch.no_grad():
    theirs = model(**torch_inputs(b, ("input_ids", "attention_mask", "token_type_ids"))).logits
  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - theirs.numpy())[valid].max() <= 1e-4


def test_gated_pytorch_inference_is_one_pass_and_equals_axk(audiobert_export):
  out, b, logits = audiobert_export
  model = AudioBertTorch.from_export(str(out))
  passes = []
  model.model.get_base_model().bert.embeddings.register_forward_hook(
      lambda *_: passes.append(1))
  theirs = model(**torch_inputs(b, audiobert_lib.INPUTS)).numpy()
  assert len(passes) == 1
  assert set(b["lora_gate"].tolist()) == {0.0, 1.0}  # rows with and without a span
  valid = b["attention_mask"].astype(bool)
  assert np.abs(logits - theirs)[valid].max() <= 1e-4


def test_audiobert_loads_by_name_in_pytorch_and_jax(audiobert_export, tmp_path):
  out, b, logits = audiobert_export
  hub_cache(tmp_path / "cache", "org/axk-audiobert", str(out))
  kwargs = dict(cache_dir=str(tmp_path / "cache"), local_files_only=True)
  jax_model = exports.load_audiobert("org/axk-audiobert", **kwargs)
  assert jax_model.path.endswith(REV)
  np.testing.assert_allclose(np.asarray(jax_model(**b)), logits, atol=1e-5, rtol=0)
  by_name = AudioBertTorch.from_pretrained("org/axk-audiobert", revision=REV, **kwargs)
  local = AudioBertTorch.from_export(str(out))
  inputs = torch_inputs(b, audiobert_lib.INPUTS)
  np.testing.assert_allclose(by_name(**inputs).numpy(), local(**inputs).numpy(), atol=1e-5,
                             rtol=0)
  # The card's PEFT-only recipe for a hub repo: base from `base/`, adapter from `adapter/`.
  import peft
  import transformers
  path = huggingface_hub.snapshot_download("org/axk-audiobert", **kwargs)
  base = transformers.BertForMaskedLM.from_pretrained(f"{path}/base")
  peft_model = peft.PeftModel.from_pretrained(base, f"{path}/adapter").eval()
  with torch.no_grad():
    direct = peft_model(**{k: inputs[k] for k in ("input_ids", "attention_mask",
                                                  "token_type_ids")}).logits
    local.model.eval()
    reference = local.model(**{k: inputs[k] for k in ("input_ids", "attention_mask",
                                                      "token_type_ids")}).logits
  np.testing.assert_allclose(direct.numpy(), reference.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_lora", [False, True])
def test_ith_loads_by_name_in_pytorch_and_jax(tmp_path, use_lora):
  module = ith_lib.Model(CFG, audio_dim=D, fusion_layer=1, use_lora=use_lora, lora_rank=4,
                         lora_alpha=8.0)
  b = batch(3)
  args = {k: b[k] for k in ith_lib.INPUTS}
  params = randomize(nn.meta.unbox(module.init(jax.random.key(0), args)["params"]), 4)
  logits = np.asarray(module.apply({"params": params}, args)["logits"])
  ith_lib.export(jax.device_get(params), module, str(tmp_path / "export"))
  hub_cache(tmp_path / "cache", "org/axk-ith", str(tmp_path / "export"))
  kwargs = dict(cache_dir=str(tmp_path / "cache"), local_files_only=True)
  jax_model = exports.load_ith("org/axk-ith", **kwargs)
  np.testing.assert_allclose(np.asarray(jax_model(**b)), logits, atol=1e-5, rtol=0)
  torch_model = IthTorch.from_pretrained("org/axk-ith", **kwargs)
  theirs = torch_model(**torch_inputs(b, ith_lib.INPUTS)).numpy()
  valid = b["attention_mask"].astype(bool)
  assert np.abs(logits - theirs)[valid].max() <= 1e-4


# ------------------------------------------------------------------------------------------
# The smoke run: cards, revisions, the span detector as a pipeline, uploads.
# ------------------------------------------------------------------------------------------


def card_numbers(readme: pathlib.Path) -> dict:
  data = huggingface_hub.ModelCard.load(readme).data
  return {(r.dataset_config, r.dataset_split, r.metric_type): (r.metric_value,
                                                               r.dataset_revision)
          for r in data.eval_results}


def model_numbers(results: dict) -> dict:
  return {(t, s, m): v for t, splits in results.items() if t in card_lib.TASK_NAMES
          for s, metrics in splits.items() for m, v in metrics.items()
          if m.removesuffix("_std") not in card_lib.NOT_MODEL_METRICS}


@pytest.mark.e2e
def test_smoke_run_cards_cite_results_and_revisions(ith_smoke):
  top = json.loads((ith_smoke / "results.json").read_text())
  assert top["revisions"]["data"]["source"] == "sample"
  for task in ("animal", "pitch"):
    results = json.loads((ith_smoke / task / "results.json").read_text())
    config = json.loads((ith_smoke / task / "config.json").read_text())
    revisions = results["revisions"]
    assert revisions == config["revisions"]
    assert revisions["data"]["revision"].startswith("sha256:")
    models = revisions["models"]
    for field in ("model.init", "features.clap", "features.ast", "features.generator"):
      assert models[field]["revision"], field
    readme = ith_smoke / task / "export" / "README.md"
    numbers = card_numbers(readme)
    expected = model_numbers(results)
    assert expected and {k: v for k, (v, _) in numbers.items()} == expected
    assert {rev for _, rev in numbers.values()} == {revisions["data"]["revision"]}
    meta = huggingface_hub.ModelCard.load(readme).data
    assert meta.pipeline_tag == "fill-mask" and meta.library_name == "axk"
    assert meta.license and meta.datasets == ["auditorybench"]
    text = readme.read_text()
    assert revisions["axk"]["commit"] in text and "IthTorch.from_pretrained" in text
  manifest = json.loads(
      (ith_smoke / "stages" / "features" / "features" / "manifest.json").read_text())
  assert manifest["data"]["revision"] == top["revisions"]["data"]["revision"]
  assert all(m["revision"] for m in manifest["models"].values())


@pytest.mark.e2e
def test_span_detector_is_a_token_classification_pipeline(ith_smoke):
  import transformers
  export = ith_smoke / "stages" / "span" / "export"
  meta = huggingface_hub.ModelCard.load(export / "README.md").data
  assert meta.pipeline_tag == "token-classification"
  sentence = "A [MASK] makes a sound like a continuous, high-pitched whine."
  tokens = transformers.pipeline("token-classification", model=str(export))(sentence)
  # The reference: BertForTokenClassification run by hand; label 1 is inside a span.
  model = transformers.AutoModelForTokenClassification.from_pretrained(str(export))
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(export))
  enc = tokenizer(sentence, return_tensors="pt", return_special_tokens_mask=True)
  special = enc.pop("special_tokens_mask")[0].tolist()
  with torch.no_grad():
    labels = model(**enc).logits[0].argmax(-1).tolist()
  assert {t["index"] for t in tokens} == {i for i, (l, sp) in enumerate(zip(labels, special))
                                          if l == 1 and not sp}
  assert {t["entity"] for t in tokens} <= {"SPAN"}
  grouped = transformers.pipeline("token-classification", model=str(export),
                                  aggregation_strategy="simple")(sentence)
  assert all(sentence[g["start"]:g["end"]] == g["word"] or g["word"] for g in grouped)


class FakeHub(huggingface_hub.HfApi):
  """HfApi at its network boundary: repos and the commits the client would send."""

  def __init__(self, existing=()):
    super().__init__(token="hf_fake")
    self.existing = list(existing)
    self.created, self.commits = [], []

  def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
    self.created.append((repo_id, private, exist_ok))
    return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

  def list_repo_files(self, repo_id, **kwargs):
    return [".gitattributes", *self.existing]

  def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
    self.commits.append((repo_id, list(operations), commit_message))
    return huggingface_hub.CommitInfo(
        commit_url=f"https://huggingface.co/{repo_id}/commit/{REV}", commit_message=commit_message,
        commit_description="", oid=REV, pr_url=None)


def op_bytes(op) -> bytes:
  source = op.path_or_fileobj
  return source if isinstance(source, bytes) else pathlib.Path(source).read_bytes()


@pytest.mark.e2e
def test_push_sends_every_file_and_the_card_privately(ith_smoke):
  api = FakeHub()
  urls = push_lib.push_run(str(ith_smoke), "org/axk-ith", api=api)
  assert sorted(api.created) == [("org/axk-ith-animal", True, True),
                                 ("org/axk-ith-pitch", True, True)]
  assert len(urls) == 2 and all(u.endswith(REV) for u in urls.values())
  repo, ops, _ = next(c for c in api.commits if c[0] == "org/axk-ith-animal")
  export = ith_smoke / "animal" / "export"
  sent = {op.path_in_repo: op_bytes(op) for op in ops}
  on_disk = {p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()}
  assert set(sent) == on_disk
  for path in on_disk - {"README.md"}:
    assert sent[path] == (export / path).read_bytes(), path
  card = sent["README.md"].decode()
  assert 'IthTorch.from_pretrained("org/axk-ith-animal")' in card
  assert card.split("\n---\n")[0] == (export / "README.md").read_text().split("\n---\n")[0]


@pytest.mark.e2e
def test_push_refuses_an_existing_repo_unless_asked(ith_smoke):
  export = str(ith_smoke / "animal" / "export")
  api = FakeHub(existing=["README.md", "old.bin"])
  with pytest.raises(push_lib.PushError, match="already holds 2 files.*overwrite"):
    push_lib.push_export(export, "org/axk-ith", api=api)
  assert not api.commits
  push_lib.push_export(export, "org/axk-ith", api=api, overwrite=True, private=False)
  _, ops, _ = api.commits[0]
  deletes = [op.path_in_repo for op in ops
             if isinstance(op, huggingface_hub.CommitOperationDelete)]
  assert deletes == ["old.bin"] and api.created[-1][1] is False
  with pytest.raises(push_lib.PushError, match="not a Hub repo id"):
    push_lib.check_repo_id("no-slash")


def test_push_of_an_adapter_names_the_repo_as_its_base(audiobert_export, monkeypatch):
  out, _, _ = audiobert_export
  # This export has no run around it (no results.json to cite): leave its card out.
  monkeypatch.setattr(card_lib, "render", lambda *args, **kwargs: "")
  ops = {op.path_in_repo: op for op in push_lib.operations(str(out), "org/axk-audiobert")}
  adapter = json.loads(op_bytes(ops["adapter/adapter_config.json"]))
  assert adapter["base_model_name_or_path"] == "org/axk-audiobert"
  assert op_bytes(ops["adapter/adapter_model.safetensors"]) == (
      out / "adapter" / "adapter_model.safetensors").read_bytes()
  assert op_bytes(ops["base/model.safetensors"]) == (out / "base" / "model.safetensors").read_bytes()


def test_provenance_names_axk_commit():
  commit = provenance.axk_commit()
  assert commit == "unknown" or len(commit.split("-")[0]) == 40


def test_license_and_citation_name_the_code_and_both_papers():
  import yaml
  root = pathlib.Path(__file__).resolve().parents[1]
  assert "Apache License" in (root / "LICENSE").read_text()
  cff = yaml.safe_load((root / "CITATION.cff").read_text())
  assert cff["license"] == "Apache-2.0" and cff["cff-version"] == "1.2.0"
  titles = {r["title"].split(":")[0]: r for r in cff["references"]}
  assert set(titles) == {"AudioBERT", "Imagine to Hear"}
  assert "2409.08199" in titles["AudioBERT"]["url"]
  assert "2503.16853" in titles["Imagine to Hear"]["url"]
