"""Sweeps (points run once, finished ones skipped) and the results report (one row per point,
metrics read from the results files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mlzsl_jax import report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG_FILE = textwrap.dedent('''
    import ml_collections

    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.seed = 1
      c.model = ml_collections.ConfigDict({"name": "biam", "context": "both", "top_k": 4})
      c.data = ml_collections.ConfigDict({"embedding": "attributes"})
      c.eval = ml_collections.ConfigDict({"protocol": "multilabel"})
      return c

    def get_sweep(arg=None):
      return {"both": {}, "none": {"model.context": "none"},
              "max": {"model.top_k": 1, "data.embedding": "strokes"}}
''')


def fake_metrics(config) -> dict:
  """Metrics that depend on the point's config, so each row's values are checkable."""
  base = {"both": 0.30, "none": 0.20}.get(config.model.context, 0.0) + config.model.top_k / 100
  return {"p@1": base, "r@1": base + 0.01, "f1@1": base + 0.02, "map": base + 0.03,
          "map_with_positives": 0.9}


def fake_train(calls):
  def train_fn(config, workdir):
    calls.append(os.path.basename(workdir))
    os.makedirs(workdir, exist_ok=True)
    m = fake_metrics(config)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"step": 10, "trained_to_end": True, "config": sweep.config_json(config),
                 "zsl": m, "gzsl": {k: v / 2 for k, v in m.items()},
                 "chance": {"zsl": {"map": 0.25}, "gzsl": {"map": 0.125}}}, f)
  return train_fn


@pytest.fixture
def config_spec(tmp_path):
  path = tmp_path / "toy_sweep.py"
  path.write_text(CONFIG_FILE)
  return str(path)


def test_rerun_skips_finished_points_and_reruns_changed_ones(tmp_path, config_spec):
  module, arg = sweep.load_config_module(config_spec)
  base = module.get_config(arg)
  root = str(tmp_path / "sweep")
  calls = []
  status = sweep.run_sweep(config_spec, base, root, train_fn=fake_train(calls), log=lambda s: 0)
  assert calls == ["both", "none", "max"]
  assert set(status.values()) == {"done"}

  calls.clear()
  status = sweep.run_sweep(config_spec, base, root, train_fn=fake_train(calls), log=lambda s: 0)
  assert calls == [] and set(status.values()) == {"skipped"}

  # A point whose results are from another config (here: a different seed for all) reruns,
  # and so does a point that stopped before its end (no trained_to_end).
  path = os.path.join(root, "none", "results.json")
  res = json.load(open(path))
  res["trained_to_end"] = False
  json.dump(res, open(path, "w"))
  calls.clear()
  sweep.run_sweep(config_spec, base, root, train_fn=fake_train(calls), log=lambda s: 0)
  assert calls == ["none"]
  base2 = sweep.apply_overrides(base, {"seed": 2})
  calls.clear()
  sweep.run_sweep(config_spec, base2, root, train_fn=fake_train(calls), only=["max"],
                  log=lambda s: 0)
  assert calls == ["max"]


def test_a_failed_point_does_not_stop_the_others(tmp_path, config_spec):
  module, _ = sweep.load_config_module(config_spec)
  calls = []
  ok = fake_train(calls)

  def flaky(config, workdir):
    if config.model.context == "none":
      raise RuntimeError("out of memory")
    ok(config, workdir)

  status = sweep.run_sweep(config_spec, module.get_config(), str(tmp_path / "s"),
                           train_fn=flaky, log=lambda s: 0)
  assert status["none"].startswith("failed: RuntimeError: out of memory")
  assert status["both"] == status["max"] == "done"


def test_report_has_one_row_per_point_with_the_files_metrics(tmp_path, config_spec):
  module, _ = sweep.load_config_module(config_spec)
  root = str(tmp_path / "sweep")
  sweep.run_sweep(config_spec, module.get_config(), root, train_fn=fake_train([]),
                  log=lambda s: 0)
  header, rows = report.build_table([root])
  # Sweep order, override fields as columns, then the papers' metric order.
  assert header == ["run", "model.context", "model.top_k", "data.embedding",
                    "ZSL P@1", "ZSL R@1", "ZSL F1@1", "ZSL mAP",
                    "GZSL P@1", "GZSL R@1", "GZSL F1@1", "GZSL mAP", "step"]
  assert [r[0] for r in rows] == ["both", "none", "max", "chance (random scores)"]
  for name, row in zip(("both", "none", "max"), rows):
    res = json.load(open(os.path.join(root, name, "results.json")))
    want = [100 * res[v][k] for v in ("zsl", "gzsl") for k in ("p@1", "r@1", "f1@1", "map")]
    assert row[4:-1] == pytest.approx(want)
    assert row[1:4] == [res["config"]["model"]["context"], res["config"]["model"]["top_k"],
                        res["config"]["data"]["embedding"]]
  assert rows[-1][7] == pytest.approx(25.0) and rows[-1][11] == pytest.approx(12.5)
  md = report.to_markdown(header, rows)
  assert md.count("\n") == 1 + len(rows)
  assert "| none | none | 4 | attributes | 24.0 | 25.0 | 26.0 | 27.0 |" in md
  csv_text = report.to_csv(header, rows)
  assert csv_text.splitlines()[2].startswith("none,none,4,attributes,24.0")


def test_report_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="no results.json under"):
    report.build_table([str(tmp_path)])
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "results.json").write_text('{"step": 3')
  with pytest.raises(ValueError, match=r"run/results.json: not valid JSON"):
    report.build_table([str(tmp_path)])
  (tmp_path / "run" / "results.json").write_text('{"step": 3, "zsl": {}}')
  with pytest.raises(ValueError, match=r"missing field\(s\) \['gzsl', 'config'\]"):
    report.build_table([str(tmp_path)])


def test_bad_sweeps_fail_naming_the_point_and_field(tmp_path, config_spec):
  module, _ = sweep.load_config_module(config_spec)
  base = module.get_config()
  with pytest.raises(ValueError, match=r"no config field 'model.contxt'"):
    sweep.apply_overrides(base, {"model.contxt": "none"})
  with pytest.raises(ValueError, match=r"config field 'model.top_k'"):
    sweep.apply_overrides(base, {"model.top_k": "four"})
  bad = tmp_path / "bad.py"
  bad.write_text(CONFIG_FILE.replace('"model.top_k": 1', '"model.topk": 1'))
  with pytest.raises(ValueError, match=r"sweep point 'max'.*'model.topk'"):
    sweep.sweep_points(str(bad))
  no_sweep = tmp_path / "plain.py"
  no_sweep.write_text(CONFIG_FILE.split("def get_sweep")[0])
  with pytest.raises(ValueError, match="defines no get_sweep"):
    sweep.sweep_points(str(no_sweep))
  with pytest.raises(ValueError, match="--only"):
    sweep.run_sweep(config_spec, base, str(tmp_path / "s"), only=["nope"], log=lambda s: 0)


def test_launch_commands_carry_each_points_overrides(config_spec):
  points = sweep.sweep_points(config_spec)
  cmds = sweep.launch_commands(config_spec, "/runs/s", points, "slurm",
                               ["--config.seed=7"])
  assert cmds[0] == f"sbatch launch/slurm.sbatch {config_spec} /runs/s/both --config.seed=7"
  assert cmds[2].endswith("/runs/s/max --config.seed=7 --config.model.top_k=1 "
                          "--config.data.embedding=strokes")
  with pytest.raises(ValueError, match="unknown launcher"):
    sweep.launch_commands(config_spec, "/r", points, "kubernetes")


def test_ablation_config_defines_the_papers_points():
  points = sweep.sweep_points(os.path.join(ROOT, "configs", "biam_digits_ablation.py"))
  names = [p.name for p in points]
  assert names[:4] == ["context_both", "context_region", "context_scene", "context_none"]
  assert {"pool_max", "pool_mean", "emb_seven_segment", "emb_strokes"} <= set(names)
  only = sweep.sweep_points(os.path.join(ROOT, "configs", "biam_digits_ablation.py") +
                            ":sweep=pooling")
  assert [p.name for p in only] == ["pool_max", "pool_mean"]


def test_cli_sweep_trains_then_skips_and_reports(tmp_path):
  """End to end through the CLI on the smoke digits: 2 points, re-run skips both."""
  data_dir = str(tmp_path / "tfds")
  cmd = [sys.executable, "-m", "mlzsl_jax.main", "sweep",
         "--config=configs/biam_digits_ablation.py:smoke=True,sweep=pooling",
         f"--workdir={tmp_path / 'sw'}", f"--config.data.data_dir={data_dir}",
         "--config.train.num_epochs=1"]
  env = {**os.environ, "XLA_FLAGS": ""}
  first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "pool_max: done" in first.stdout and "pool_mean: done" in first.stdout
  second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "pool_max: skipped" in second.stdout and "pool_mean: skipped" in second.stdout
  out = subprocess.run([sys.executable, "-m", "mlzsl_jax.main", "report", str(tmp_path / "sw"),
                        "--csv", str(tmp_path / "t.csv")], cwd=ROOT, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = (tmp_path / "t.csv").read_text().splitlines()
  assert [r.split(",")[0] for r in rows[1:]] == ["pool_max", "pool_mean",
                                                 "chance (random scores)"]
  res = json.load(open(tmp_path / "sw" / "pool_mean" / "results.json"))
  assert res["config"]["model"]["top_k"] == 36 and res["trained_to_end"]
  assert float(rows[2].split(",")[rows[0].split(",").index("ZSL mAP")]) == pytest.approx(
      100 * res["zsl"]["map"])


def test_report_aggregates_seeds_into_mean_and_sample_std(tmp_path):
  """Runs equal but for seed fold into one row: mean and std (n-1) of the files' values."""
  import ml_collections
  zsl_maps = {("a", 1): 0.30, ("a", 2): 0.34, ("a", 3): 0.29, ("b", 1): 0.20, ("b", 2): 0.26}
  for (variant, seed), value in zsl_maps.items():
    config = ml_collections.ConfigDict({"seed": seed, "model": {"variant": variant}})
    workdir = tmp_path / (variant if seed == 1 else f"{variant}_s{seed}")
    workdir.mkdir()
    (workdir / "results.json").write_text(json.dumps(
        {"step": 5, "config": config.to_dict(), "zsl": {"map": value},
         "gzsl": {"map": value / 2}}))
  header, rows = report.build_table([str(tmp_path)], aggregate=True)
  assert header == ["run", "model.variant", "ZSL mAP", "GZSL mAP", "n"]
  assert [r[0] for r in rows] == ["a", "b"] and [r[-1] for r in rows] == [3, 2]
  for row, variant in zip(rows, "ab"):
    vals = [100 * v for (var, _), v in zsl_maps.items() if var == variant]
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    assert row[2] == pytest.approx((mean, std))
    assert row[3] == pytest.approx((mean / 2, std / 2))
  assert "| a | a | 31.0 ± 2.6 | 15.5 ± 1.3 | 3 |" in report.to_markdown(header, rows)
  assert report.to_csv(header, rows).splitlines()[0] == (
      "run,model.variant,ZSL mAP,ZSL mAP std,GZSL mAP,GZSL mAP std,n")


def test_ablation_config_seeds_switch_keeps_first_seed_names():
  spec = os.path.join(ROOT, "configs", "biam_digits_ablation.py")
  points = {p.name: p.overrides for p in sweep.sweep_points(spec + ":sweep=pooling,seeds=3483/1")}
  assert points == {"pool_max": {"model.top_k": 1, "seed": 3483},
                    "pool_max_s1": {"model.top_k": 1, "seed": 1},
                    "pool_mean": {"model.top_k": 36, "seed": 3483},
                    "pool_mean_s1": {"model.top_k": 36, "seed": 1}}
  with pytest.raises(ValueError, match="seeds='1-2'"):
    sweep.sweep_points(spec + ":seeds=1-2")


def test_plan_marks_finished_points_for_the_launch_commands(tmp_path, config_spec):
  module, _ = sweep.load_config_module(config_spec)
  base, root = module.get_config(), str(tmp_path / "s")
  sweep.run_sweep(config_spec, base, root, train_fn=fake_train([]), only=["both", "max"],
                  log=lambda s: 0)
  todo = sweep.plan(config_spec, base, root)
  assert [(p.name, finished) for p, _, _, finished in todo] == [
      ("both", True), ("none", False), ("max", True)]
  assert [p.name for p, *_ in sweep.plan(config_spec, base, root, only=["none"])] == ["none"]
  with pytest.raises(ValueError, match=r"--only \['nope'\]"):
    sweep.plan(config_spec, base, root, only=["nope"])
