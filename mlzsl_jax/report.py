"""Results tables: gathers ``results.json`` files into one markdown / CSV table.

  python -m mlzsl_jax.main report DIR [DIR ...] [--csv out.csv] [--markdown out.md]

Each DIR is a run's workdir or a folder of them (a sweep's root; searched recursively).
Rows follow a sweep's ``sweep.json`` point order where there is one, then the path order;
columns follow the papers' tables: the config fields that differ between the rows (for a
sweep: its override fields), then for ZSL and GZSL P@K, R@K, F1@K per K and mAP (multi-label
protocols), or the protocol's own metrics in the order its evaluation wrote them. A final row
gives the chance level when every run shares it. ``--aggregate`` folds runs whose configs
differ only in ``seed`` into one row of mean ± std (sample std, n-1) with a column ``n``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Any, Sequence

import numpy as np

from mlzsl_jax.sweep import SWEEP_FILE
from mlzsl_jax.workdir import RESULTS_FILE

VIEWS = ("zsl", "gzsl")
_AT_K = re.compile(r"^(p|r|f1)@(\d+)$")
# Shown as columns without a --metrics choice; others (e.g. mAP over labels with positives)
# stay in the CSV only when asked for.
_HIDDEN = {"map_with_positives", "num_labels", "num_labels_with_positive", "hubness_skew"}


def find_results(dirs: Sequence[str]) -> list[tuple[str, str]]:
  """[(row name, path of results.json)] under ``dirs``, in report order.

  Row names are paths relative to the DIR given (the DIR's own name for a run workdir).
  FileNotFoundError names a DIR that holds no results.json at all.
  """
  found = []
  for root in dirs:
    if not os.path.isdir(root):
      raise FileNotFoundError(f"report: {root!r} is not a directory")
    paths = []
    for here, subdirs, files in os.walk(root):
      subdirs.sort()
      if RESULTS_FILE in files:
        paths.append(os.path.join(here, RESULTS_FILE))
    if not paths:
      raise FileNotFoundError(f"report: no {RESULTS_FILE} under {root!r} (train or evaluate "
                              "first)")
    order = _sweep_order(root)
    def key(path, order=order, root=root):
      rel = os.path.relpath(os.path.dirname(path), root)
      return (order.get(rel, len(order)), rel)
    for path in sorted(paths, key=key):
      rel = os.path.relpath(os.path.dirname(path), root)
      found.append((os.path.basename(os.path.normpath(root)) if rel == "." else rel, path))
  return found


def _sweep_order(root: str) -> dict[str, int]:
  path = os.path.join(root, SWEEP_FILE)
  if not os.path.exists(path):
    return {}
  return {p["name"]: i for i, p in enumerate(_load_json(path)["points"])}


def _sweep_fields(dirs: Sequence[str]) -> list[str]:
  fields: list[str] = []
  for root in dirs:
    path = os.path.join(root, SWEEP_FILE)
    if os.path.exists(path):
      for p in _load_json(path)["points"]:
        fields += [f for f in p["overrides"] if f not in fields]
  return fields


def _load_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def results_of_split(results: dict, split: str | None, path: str) -> dict:
  """``results`` itself, or (``split``) its 'splits' entry of that name with the config and
  step attached; ValueError names the file and the splits it has."""
  if not split:
    return results
  have = results.get("splits", {})
  if split not in have:
    raise ValueError(f"{path}: no evaluation of split {split!r} (has {sorted(have)}; "
                     "config field eval.extra_test_splits)")
  return {**have[split], "config": results["config"], "step": results["step"]}


def load_results(path: str) -> dict:
  """One results.json, checked to hold the ZSL and GZSL views (ValueError names the file)."""
  res = _load_json(path)
  missing = [k for k in (*VIEWS, "config", "step") if k not in res]
  if missing:
    raise ValueError(f"{path}: missing field(s) {missing}; expected a results.json written "
                     "by mlzsl_jax (train / evaluate)")
  return res


def metric_columns(results: Sequence[dict]) -> list[str]:
  """Metric keys in the papers' order: P@k, R@k, F1@k per k (ascending), mAP, then others."""
  keys: list[str] = []
  for res in results:
    for view in VIEWS:
      keys += [k for k in res[view] if k not in keys and k not in _HIDDEN]
  at_k = sorted((k for k in keys if _AT_K.match(k)),
                key=lambda k: (int(_AT_K.match(k)[2]), ("p", "r", "f1").index(_AT_K.match(k)[1])))
  rest = [k for k in keys if not _AT_K.match(k)]
  if "map" in rest:
    rest.remove("map")
    at_k.append("map")
  return at_k + rest


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def varying_fields(results: Sequence[dict]) -> list[str]:
  """Config fields whose values differ between the runs (sorted), e.g. 'model.context'."""
  flats = [_flat(r["config"]) for r in results]
  keys = sorted(set().union(*flats)) if flats else []
  return [k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1]


def _label(key: str) -> str:
  m = _AT_K.match(key)
  if m:
    return f"{m[1].upper()}@{m[2]}"
  return {"map": "mAP"}.get(key, key)


def _chance_row(results: Sequence[dict]) -> dict | None:
  chances = [json.dumps(r.get("chance"), sort_keys=True) for r in results]
  if results and results[0].get("chance") and len(set(chances)) == 1:
    return results[0]["chance"]
  return None


def build_table(dirs: Sequence[str], metrics: Sequence[str] | None = None,
                fields: Sequence[str] | None = None, aggregate: bool = False,
                split: str | None = None) -> tuple[list[str], list[list[Any]]]:
  """(header, rows) of the report; metric values x100 as floats, missing ones None.

  With ``aggregate``, runs whose configs are equal but for ``seed`` become one row (named
  after its first run, a trailing ``_s<seed>`` dropped) whose metric cells are
  ``(mean, std)`` pairs, followed by the run count ``n`` instead of the step. ``split``:
  the evaluation of that extra split (results.json 'splits') instead of the test split.
  """
  found = find_results(dirs)
  results = [results_of_split(load_results(path), split, path) for _, path in found]
  metrics = list(metrics) if metrics else metric_columns(results)
  if fields is None:
    fields = _sweep_fields(dirs) or varying_fields(results)
  if aggregate:
    fields = [f for f in fields if f != "seed"]
  header = ["run", *fields] + [f"{view.upper()} {_label(m)}" for view in VIEWS
                               for m in metrics] + ["n" if aggregate else "step"]
  groups: dict[str, list[int]] = {}
  for i, res in enumerate(results):
    key = json.dumps({k: v for k, v in _flat(res["config"]).items() if k != "seed"},
                     sort_keys=True) if aggregate else str(i)
    groups.setdefault(key, []).append(i)
  rows = []
  for members in groups.values():
    first = results[members[0]]
    flat = _flat(first["config"])
    values = [[_x100(results[i][view].get(m)) for i in members] for view in VIEWS
              for m in metrics]
    if aggregate:
      name = re.sub(r"_s\d+$", "", found[members[0]][0])
      cells = [_mean_std(v) for v in values] + [len(members)]
    else:
      name = found[members[0]][0]
      cells = [v[0] for v in values] + [first["step"]]
    rows.append([name, *(flat.get(f) for f in fields)] + cells)
  chance = _chance_row(results)
  if chance is not None:
    rows.append(["chance (random scores)", *([None] * len(fields))]
                + [_x100(chance.get(view, {}).get(m)) for view in VIEWS for m in metrics]
                + [None])
  return header, rows


def _mean_std(values: list[float | None]) -> tuple[float, float] | None:
  if any(v is None for v in values):
    return None
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _x100(value: Any) -> float | None:
  return None if value is None else 100.0 * float(value)


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, float) for v in value):
    return f"{value[0]:.1f} ± {value[1]:.1f}"
  if isinstance(value, float):
    return f"{value:.1f}"
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  return str(value)


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def to_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  pairs = [any(isinstance(r[j], tuple) for r in rows) for j in range(len(header))]
  writer.writerow([h for j, h in enumerate(header)
                   for h in ((h, f"{h} std") if pairs[j] else (h,))])
  for row in rows:
    cells = []
    for j, v in enumerate(row):
      if pairs[j]:
        cells += list(v) if isinstance(v, tuple) else [v, ""]
      else:
        cells.append(v)
    writer.writerow(["" if v is None else (json.dumps(v) if isinstance(v, (list, dict))
                                           else v) for v in cells])
  return out.getvalue()


def main(argv: Sequence[str]) -> str:
  """``report DIR... [--csv PATH] [--markdown PATH] [--metrics map,f1@3] [--fields a.b,c]``;
  prints the markdown table and returns it."""
  import argparse
  parser = argparse.ArgumentParser(prog="python -m mlzsl_jax.main report",
                                   description="Gather results.json files into one table.")
  parser.add_argument("dirs", nargs="+", help="run workdirs or folders of them (sweep roots)")
  parser.add_argument("--csv", help="also write the table as CSV (values x100) to this file")
  parser.add_argument("--markdown", help="also write the markdown table to this file")
  parser.add_argument("--metrics", help="comma-separated metric keys (default: P/R/F1@K, mAP)")
  parser.add_argument("--fields", help="comma-separated config fields to show as columns "
                      "(default: the sweep's override fields, else those that differ)")
  parser.add_argument("--aggregate", action="store_true", help="one row of mean ± std per "
                      "config over runs that differ only in seed")
  parser.add_argument("--split", help="the table of this extra evaluated split (e.g. "
                      "test_binding; config field eval.extra_test_splits)")
  args = parser.parse_args(list(argv))
  split = lambda s: [x for x in s.split(",") if x] if s is not None else None  # noqa: E731
  header, rows = build_table(args.dirs, split(args.metrics), split(args.fields),
                             aggregate=args.aggregate, split=args.split)
  text = to_markdown(header, rows)
  print(f"values x100; mAP = official mean over all labels\n\n{text}", flush=True)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text + "\n")
  if args.csv:
    with open(args.csv, "w") as f:
      f.write(to_csv(header, rows))
  return text
