"""The official BiAM NUS-WIDE protocol end to end on tiny files in the official layout:
prepare (with the VGG19 scene head) -> phase 'select' (train80, validation on val20, best
checkpoint, test passes of the best) -> phase 'finetune' (from the best, full train) -> the
final table; selection on scripted metrics; runs killed inside and between the phases end
with the same table as an uninterrupted one."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mlzsl_jax import evaluate, phases, restore, selection, train
from tests import test_nus_wide as nus

# the tiny files are not the official sizes: the builder says so once
pytestmark = pytest.mark.filterwarnings("ignore:nus_wide. files have")

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "biam_nus_wide.py"
# 4 select epochs (validation after 2, 3, 4; tests of the best after 2 and 4), 2 fine-tune.
PHASE_ARG = "select_epochs=4,finetune_epochs=2,val_after=1,val_every=1,test_every=2"


def _module():
  spec = importlib.util.spec_from_file_location("biam_nus_wide_cfg", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(files, data_dir, arg: str = PHASE_ARG):
  c = _module().get_config(arg)
  c.data.manual_dir = str(files)
  c.data.data_dir = str(data_dir)
  c.model.channels, c.model.heads, c.model.out_dim, c.model.top_k = 8, 2, 8, 2
  c.train.batch_size = 8
  c.train.log_every_steps = 2
  c.train.checkpoint_every_steps = 4
  c.train.keep_checkpoints = 20
  c.train.shuffle_buffer = 64
  c.eval.batch_size = 8
  c.eval.chance_seeds = 1
  return c


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  base = tmp_path_factory.mktemp("nus_phases")
  saved = nus.NUM_TRAIN
  nus.NUM_TRAIN = 40  # train80 = 32 images: 4 steps of 8 (one row per simulated device)
  try:
    files = nus.write_files(base / "NUS-WIDE", nus.official_content(seed=3))
  finally:
    nus.NUM_TRAIN = saved
  return files, base / "tfds"


def _spec(arg: str = PHASE_ARG) -> str:
  return f"{CONFIG}:{arg}"


def _run(official, workdir, **kw) -> str | None:
  files, data_dir = official
  return phases.run_phases(_spec(), tiny_config(files, data_dir), str(workdir), **kw)


class Killed(Exception):
  """Stands for a kill: raised from inside training at a chosen moment."""


@pytest.fixture(scope="module")
def uninterrupted(official, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("chain")
  table = phases.run_phases(_spec(), tiny_config(*official), str(workdir))
  return workdir, table


def test_chain_runs_the_official_protocol(uninterrupted):
  workdir, table = uninterrupted
  select = selection.EvalHistory(str(workdir / "select"))
  vals, tests = select.of_kind("val"), select.of_kind("test")
  assert [r["epoch"] for r in vals] == [2, 3, 4]
  assert all(r["split"] == "val20" for r in vals)
  assert [r["epoch"] for r in tests] == [2, 4]
  # each phase-1 test scored the best checkpoint known at that epoch (train_nus.py test())
  for t in tests:
    best = selection.best_record([v for v in vals if v["epoch"] <= t["epoch"]], "seen/f1@5")
    assert t["checkpoint"] == "best" and t["params_step"] == best["step"]
  best = selection.best_record(vals, "seen/f1@5")
  assert train.best_checkpoint_manager(str(workdir / "select")).all_steps() == [best["step"]]
  # phase 2 read the full train split (40 images: 5 steps of 8) and tested after each epoch
  ft_config = json.loads((workdir / "finetune" / "config.json").read_text())
  assert ft_config["data"]["train_split"] == "train"
  assert ft_config["train"]["init_from"] == str(workdir / "select" / "best")
  assert ft_config["optimizer"]["schedule"] == "constant"
  finetune = selection.EvalHistory(str(workdir / "finetune"))
  assert [(r["epoch"], r["step"]) for r in finetune.of_kind("test")] == [(1, 5), (2, 10)]
  assert finetune.of_kind("val") == []
  # the final table: one row per test record, the selection, the test-set-choice note
  assert (workdir / phases.FINAL_TABLE).read_text().strip() == table.strip()
  rows = [line for line in table.splitlines() if line.startswith("| select")
          or line.startswith("| finetune")]
  assert len(rows) == 4
  ft_row = next(r for r in rows if r.startswith("| finetune | 2 "))
  zsl_map = finetune.get("test", 10)["views"]["zsl"]["map"]
  assert f"{100 * zsl_map:.1f}" in ft_row
  assert f"selected epoch {best['epoch']}" in table
  assert "choice made on the test set" in table
  # results.json of phase 1 is the best checkpoint's evaluation
  res = json.loads((workdir / "select" / "results.json").read_text())
  assert res["step"] == best["step"] and res["trained_to_end"]


def test_finetune_starts_from_the_best_parameters(uninterrupted, official):
  """Phase 2's first steps start from phase 1's best parameters and BatchNorm statistics."""
  workdir, _ = uninterrupted
  config = phases.plan(_spec(), tiny_config(*official), str(workdir))[1][1]
  source, trainer, best, _ = restore.restore(config, str(workdir / "select"), "best")
  state = train.init_from_checkpoint(trainer, str(workdir / "select" / "best"))
  assert int(state.step) == 0
  for a, b in zip(jax.tree.leaves((state.params, state.model_state)),
                  jax.tree.leaves((best.params, best.model_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # a fresh optimizer: Adam's moments are zero
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state)
             if np.asarray(x).dtype == np.float32)
  del source


@pytest.mark.parametrize("values, expected_epoch", [
    ((0.5, 0.7, 0.7), 4),  # a tie goes to the later epoch (official `>=`)
])
def test_selection_follows_a_scripted_metric(values, expected_epoch, official, tmp_path,
                                             monkeypatch):
  scripted = dict(zip((2, 3, 4), values))
  real = evaluate.validation_views
  calls = []

  def fake(trainer, source, state, config, split_name):
    views = real(trainer, source, state, config, split_name)
    epoch = int(state.step) // 4  # 4 steps per epoch on train80 (32 images, batch 8)
    calls.append(epoch)
    views["seen"]["f1@5"] = scripted[epoch]
    return views

  monkeypatch.setattr(evaluate, "validation_views", fake)
  config = phases.plan(_spec(), tiny_config(*official), str(tmp_path))[0][1]
  train.train_and_evaluate(config, str(tmp_path / "select"))
  assert calls == [2, 3, 4]
  hist = selection.EvalHistory(str(tmp_path / "select"))
  assert [r["selected"] for r in hist.of_kind("val")] == [v >= max(values[:i + 1])
                                                          for i, v in enumerate(values)]
  best_step = 4 * expected_epoch
  best_dir = tmp_path / "select" / "best"
  assert train.best_checkpoint_manager(str(tmp_path / "select")).all_steps() == [best_step]
  # the kept best is the state of that step
  _, trainer, best, step = restore.restore(config, str(tmp_path / "select"), "best")
  _, _, same, _ = restore.restore(config, str(tmp_path / "select"), best_step)
  assert step == best_step
  for a, b in zip(jax.tree.leaves(best.params), jax.tree.leaves(same.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert best_dir.is_dir()
  del trainer


def test_best_record_rules():
  def rec(epoch, value):
    return {"epoch": epoch, "views": {"seen": {"f1@5": value}}}
  recs = [rec(2, 0.3), rec(4, float("nan")), rec(6, 0.5), rec(8, 0.5), rec(10, 0.2)]
  assert selection.best_record(recs, "seen/f1@5")["epoch"] == 8
  assert selection.best_record(recs[:2], "seen/f1@5")["epoch"] == 2
  assert selection.best_record([], "seen/f1@5") is None
  with pytest.raises(ValueError, match="eval.select_metric"):
    selection.parse_metric("f1@5")
  with pytest.raises(KeyError, match="no metric 'seen/map'"):
    selection.metric_value(rec(2, 0.1), "seen/map")


def test_killed_inside_and_between_phases_ends_with_the_same_table(uninterrupted, official,
                                                                   tmp_path, monkeypatch):
  """Kills at: phase 1 mid-epoch (step 6), right after a validation's best save but before
  its record (crash window), between the phases, and inside phase 2; each re-run resumes."""
  _, table = uninterrupted
  workdir = tmp_path / "chain"
  real_prefetch = train.pipeline.prefetch_to_device
  budget = {"steps": None}

  def counting(*args, **kwargs):
    for batch in real_prefetch(*args, **kwargs):
      if budget["steps"] is not None:
        if budget["steps"] == 0:
          raise Killed()
        budget["steps"] -= 1
      yield batch

  monkeypatch.setattr(train.pipeline, "prefetch_to_device", counting)

  # 1) inside phase 1, in the middle of epoch 2
  budget["steps"] = 6
  with pytest.raises(Killed):
    _run(official, workdir)
  assert train.checkpoint_manager(str(workdir / "select"),
                                  tiny_config(*official)).latest_step() == 4

  # 2) after the best checkpoint of a validation is written, before its record
  budget["steps"] = None
  real_add = selection.EvalHistory.add

  def add_then_die(self, record):
    if record["kind"] == "val" and record["epoch"] == 3:
      raise Killed()
    real_add(self, record)
  monkeypatch.setattr(selection.EvalHistory, "add", add_then_die)
  with pytest.raises(Killed):
    _run(official, workdir)
  monkeypatch.setattr(selection.EvalHistory, "add", real_add)

  # 3) between the phases
  def phase_one_then_die(config, wd):
    result = train.train_and_evaluate(config, wd)
    raise Killed()
  with pytest.raises(Killed):
    _run(official, workdir, train_fn=phase_one_then_die)
  assert (workdir / "select" / "results.json").exists()
  assert not (workdir / "finetune").exists()

  # 4) inside phase 2 (after its 7th step: epoch 2)
  budget["steps"] = 7
  with pytest.raises(Killed):
    _run(official, workdir)
  budget["steps"] = None
  assert _run(official, workdir).strip() == table.strip()
  assert (selection.EvalHistory(str(workdir / "select")).records
          == selection.EvalHistory(str(uninterrupted[0] / "select")).records)


def test_phase_errors(official, tmp_path):
  base = tiny_config(*official)
  with pytest.raises(ValueError, match="defines no get_phases"):
    phases.plan(str(pathlib.Path(CONFIG).parent / "biam_digits.py"), base, str(tmp_path))
  config = phases.plan(_spec(), base, str(tmp_path))[1][1]
  config = config.copy_and_resolve_references()
  config.train.init_from = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="train.init_from"):
    train.train_and_evaluate(config, str(tmp_path / "ft"))
  config = phases.plan(_spec(), base, str(tmp_path))[0][1].copy_and_resolve_references()
  config.eval.val_epochs = (9,)
  with pytest.raises(ValueError, match="eval.val_epochs"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))

