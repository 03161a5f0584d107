"""The package's import structure: layers import downward only, and no module imports itself
back through others (docs/architecture.md lists the layers).

Every `import axk...` and `from axk... import ...` counts, at module level or inside a
function: a lazy import keeps torch out of training, it does not make an arrow legal.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")

# Lowest first; a module may import from its own layer and the layers below it.
LAYERS = (
    ("utils", ("axk", "axk.utils")),
    ("data and I/O basics", ("axk.hub", "axk.data", "axk.tasks", "axk.plugins", "axk.pt")),
    ("models", ("axk.models",)),
    ("checkpoints and features", ("axk.hf", "axk.features")),
    ("methods", ("axk.methods",)),
    ("training, provenance, publishing, rendering",
     ("axk.train", "axk.provenance", "axk.publish", "axk.report")),
    ("runs", ("axk.runs",)),
    ("entry points", ("axk.main", "axk.predict", "axk.demo", "axk.push", "axk.glue_spans",
                      "axk.label_spans", "axk.bench")),
)


def modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of the package."""
  out = {}
  for folder, _, names in os.walk(os.path.join(ROOT, "axk")):
    for n in names:
      if n.endswith(".py"):
        path = os.path.join(folder, n)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[name.removesuffix(".__init__")] = path
  return out


def imports(known: dict[str, str]) -> dict[str, set[str]]:
  """Module -> the package's modules it imports (anywhere in its file)."""

  def resolve(name: str) -> str:
    while name and name not in known:
      name = name.rpartition(".")[0]
    return name

  edges = {}
  for name, path in known.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        found.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "axk")
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
          node.module.split(".")[0] == "axk":
        for a in node.names:
          full = f"{node.module}.{a.name}"
          found.add(full if full in known else resolve(node.module))
    found.discard(name)
    edges[name] = found
  return edges


def layer_of(module: str) -> int:
  best, depth = None, -1
  for i, (_, prefixes) in enumerate(LAYERS):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and len(p) > depth:
        best, depth = i, len(p)
  if best is None:
    raise AssertionError(f"{module}: in no layer of tests/test_layers.py (add it there and to "
                         "docs/architecture.md)")
  return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_every_module_has_a_layer_and_imports_only_downward():
  edges = imports(modules())
  upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
            for a, targets in sorted(edges.items()) for b in sorted(targets)
            if layer_of(b) > layer_of(a)]
  assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_import_circles():
  found = cycles(imports(modules()))
  assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("edges,expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_circle_finder_finds_circles(edges, expected):
  assert cycles(edges) == expected


def test_the_layer_check_sees_lazy_and_upward_imports(tmp_path, monkeypatch):
  """An import inside a function counts, and an upward one is reported."""
  pkg = tmp_path / "axk"
  (pkg / "models").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "models" / "__init__.py").write_text("")
  (pkg / "runs.py").write_text("")
  (pkg / "models" / "m.py").write_text("def f():\n  from axk import runs\n")
  monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
  edges = imports(modules())
  assert edges["axk.models.m"] == {"axk.runs"}
  assert layer_of("axk.runs") > layer_of("axk.models.m")
