"""The README is a short front door whose links, paths and config overrides are real.

No JAX work: only text parsing, file checks and the config files' get_config (which imports
the library, not data). Only configs whose commands override a field are loaded.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Repository paths that look like files: configs/*.py, scripts/*.py, benchmarks/*.py|sh,
# docs/*.md, mlzsl_jax/**.py, launch/* (optionally followed by ':arg' on configs).
PATH = re.compile(
    r"(?<![\w/.-])("
    r"configs/[\w./-]+\.py"
    r"|scripts/[\w./-]+\.(?:py|sh)"
    r"|benchmarks/[\w./-]+\.(?:py|sh|md)"
    r"|docs/[\w./-]+\.md"
    r"|mlzsl_jax/[\w./-]+\.py"
    r"|launch/[\w.-]+"
    r")")
CONFIG_ARG = re.compile(r"^(?:--config=)?(configs/[\w./-]+\.py)(?::(.*))?$")
FIELD = re.compile(r"^--config\.([A-Za-z_][\w.]*)(?:=|$)")


def _code_blocks(text: str) -> list[str]:
  return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def _inline_code(text: str) -> list[str]:
  outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
  return re.findall(r"`([^`\n]+)`", outside)


def _commands(block: str) -> list[str]:
  """The block's commands: continuation lines (ending in a backslash) joined, comments
  dropped."""
  out, cur = [], ""
  for line in block.splitlines():
    stripped = line.strip()
    if not cur and (not stripped or stripped.startswith("#")):
      continue
    if stripped.endswith("\\"):
      cur += stripped[:-1] + " "
      continue
    cur += stripped
    out.append(cur)
    cur = ""
  if cur:
    out.append(cur)
  return out


def _tokens(command: str) -> list[str]:
  command = re.sub(r"\s#.*$", "", command)  # a trailing comment
  try:
    return shlex.split(command)
  except ValueError:
    return command.split()


def _load_config(path: str, arg: str | None):
  spec = importlib.util.spec_from_file_location(
      "readme_cfg_" + re.sub(r"\W", "_", path), ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _walk(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if hasattr(node, "keys"):
      assert part in node.keys(), f"no field {part!r} (of {dotted!r}); known: {sorted(node.keys())}"
      node = node[part]
    else:
      raise AssertionError(f"{dotted!r}: {part!r} is below a leaf ({type(node).__name__})")
  return node


def test_readme_is_short():
  n = len(README.read_text().splitlines())
  assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES})"


@pytest.mark.parametrize("page", [README] + DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
  text = page.read_text()
  # Links inside code blocks are code, not Markdown.
  text = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
  missing = []
  for target in LINK.findall(text):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
      continue  # http(s), mailto, ... and anchors within the page
    path = target.split("#", 1)[0]
    if not (page.parent / path).exists():
      missing.append(target)
  assert not missing, f"{page.name}: links to missing files: {missing}"


def test_readme_paths_exist():
  text = README.read_text()
  spans = _code_blocks(text) + _inline_code(text)
  named = {m for span in spans for m in PATH.findall(span)}
  assert len(named) >= 10, sorted(named)
  missing = sorted(p for p in named if not (ROOT / p).exists())
  assert not missing, f"README.md names paths that do not exist: {missing}"


def test_readme_config_overrides_exist():
  """Every `--config.a.b=` field of a README command exists in the config that command names."""
  text = README.read_text()
  commands = [c for block in _code_blocks(text) for c in _commands(block)]
  # The launch table's commands live in inline code (a bare `--config.x=y` is not a command).
  commands += [c for c in _inline_code(text) if "--config." in c and "configs/" in c]
  checked, configs = 0, {}
  for command in commands:
    tokens = _tokens(command)
    fields = [m.group(1) for t in tokens if (m := FIELD.match(t))]
    if not fields:
      continue
    target = None
    for i, tok in enumerate(tokens):
      if tok == "--config" and i + 1 < len(tokens):
        target = CONFIG_ARG.match(tokens[i + 1])
      elif tok.startswith("--config=configs/"):
        target = CONFIG_ARG.match(tok)
      if target:
        break
    if target is None:  # launchers: the config file is a positional argument
      target = next((m for t in tokens if (m := CONFIG_ARG.match(t))), None)
    assert target is not None, f"a README command overrides {fields} but names no config: {command}"
    key = (target.group(1), target.group(2))
    if key not in configs:
      try:
        configs[key] = _load_config(*key)
      except (FileNotFoundError, OSError):
        configs[key] = None  # needs data to load: skip its commands
    if configs[key] is None:
      continue
    for field in fields:
      _walk(configs[key], field)
    checked += 1
  assert checked >= 5, f"only {checked} README commands with config overrides were checked"
