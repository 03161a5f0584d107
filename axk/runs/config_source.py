"""The comment of each config field, read from the config files by field path.

A field's comment is the one written on the line that assigns it (`c.model.name = "ith"  #
axk/methods/ith.py`). Which lines assign which field is found by running the config's
`get_config(variant)` with a line tracer on the files of its folder (the config file itself
and `configs/common.py`'s helpers): each executed assignment `x.a.b = ...` (or
`x.a.update(b=...)`) is resolved through the object `x` holds at that moment, located in
the finished config, so `c` in `get_config`, `d` in `data_config()` and the `c` parameter of
`add_lora(c)` all name the right subtree. The last executed assignment of a field that has a
comment gives it; so a comment written in configs/common.py belongs to every config that
uses that line, unless the config's own assignment has a comment, and a line in a branch the
variant does not run says nothing. A field assigned on no commented line has no comment.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import io
import os
import sys
import tokenize

import ml_collections


@functools.cache
def _statements(path: str) -> dict[int, tuple[tuple[str, str], ...]]:
  """First line of each assignment statement -> ((variable, field path below it), ...)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)

  def chain(node) -> tuple[str, str] | None:
    attrs = []
    while isinstance(node, ast.Attribute):
      attrs.append(node.attr)
      node = node.value
    if isinstance(node, ast.Name):
      return node.id, ".".join(reversed(attrs))
    return None

  out: dict[int, list] = {}
  for node in ast.walk(tree):
    found = []
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      found = [t for t in map(chain, targets) if t and t[1]]
    elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
          and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "update"):
      base = chain(node.value.func.value)
      if base:
        keys = [k.arg for k in node.value.keywords if k.arg]
        for arg in node.value.args:
          if isinstance(arg, ast.Dict):
            keys += [k.value for k in arg.keys
                     if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        found = [(base[0], ".".join(p for p in (base[1], k) if p)) for k in keys]
    if found:
      out.setdefault(node.lineno, []).extend(found)
  return {line: tuple(v) for line, v in out.items()}


@functools.cache
def _comments(path: str) -> dict[int, str]:
  """Line -> its trailing comment (a comment after code on the same line)."""
  with open(path, encoding="utf-8") as f:
    source = f.read()
  out, code_lines = {}, set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      if tok.start[0] in code_lines:
        out[tok.start[0]] = tok.string.lstrip("#").strip()
    elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENCODING):
      code_lines.add(tok.start[0])
  return out


def _load(path: str):
  name = "axk_config_source_" + hashlib.sha1(path.encode()).hexdigest()[:10]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def field_comments(spec: str) -> dict[str, str]:
  """`field path -> comment` for the config `spec` ("path.py[:variant]")."""
  path, _, variant = spec.partition(":")
  path = os.path.abspath(os.path.expanduser(path))
  folder = os.path.dirname(path)
  module = _load(path)
  events: list[tuple[str, int, dict[str, int]]] = []

  def ours(frame) -> bool:
    return os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == folder

  def on_line(frame, event, arg):
    del arg
    if event == "line":
      lines = _statements(os.path.abspath(frame.f_code.co_filename))
      if frame.f_lineno in lines:
        events.append((os.path.abspath(frame.f_code.co_filename), frame.f_lineno,
                       {k: id(v) for k, v in frame.f_locals.items()
                        if isinstance(v, ml_collections.ConfigDict)}))
    return on_line

  def on_call(frame, event, arg):
    del event, arg
    return on_line if ours(frame) else None

  before = sys.gettrace()
  sys.settrace(on_call)
  try:
    config = module.get_config(variant or None)
  finally:
    sys.settrace(before)
  where: dict[int, str] = {}

  def walk(node, prefix: str) -> None:
    where.setdefault(id(node), prefix)
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f"{prefix}{key}.")

  walk(config, "")
  comments: dict[str, str] = {}
  for file, line, names in events:
    note = _comments(file).get(line, "")
    for variable, field in _statements(file)[line]:
      if variable in names and names[variable] in where and note:
        comments[where[names[variable]] + field] = note
  return comments


def show(config, comments: dict[str, str]) -> str:
  """Every leaf field of `config` as `name = value  # comment`, in the config's order (an
  empty subtree as `name = {}`)."""
  out = []

  def walk(node, prefix):
    for key, value in node.items():
      path = f"{prefix}{key}"
      if hasattr(value, "items") and value:
        walk(value, path + ".")
        continue
      shown = "{}" if hasattr(value, "items") else repr(value)
      note = comments.get(path, "")
      out.append(f"{path} = {shown}" + (f"  # {note}" if note else ""))

  walk(config, "")
  return "\n".join(out)
