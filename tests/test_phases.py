"""The official BiAM NUS-WIDE protocol end to end on tiny files in the official layout:
prepare (with the VGG19 scene head) -> phase 'select' (train80, validation on val20, best
checkpoint, test passes of the best) -> phase 'finetune' (from the best, full train) -> the
final table; selection on scripted metrics; runs killed inside and between the phases end
with the same table as an uninterrupted one."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import pathlib

import h5py
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mlzsl_jax import workdir as wd
from mlzsl_jax import step as step_lib
from mlzsl_jax import evaluate, phases, restore, selection, train
from mlzsl_jax.data import get_dataset, nus_wide, pipeline
from mlzsl_jax.extract import scene_head
from tests import test_nus_wide as nus
from tests.test_extract import write_scene_weights

# the tiny files are not the official sizes: the builder says so once
pytestmark = pytest.mark.filterwarnings("ignore:nus_wide. files have")

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "biam_nus_wide.py"
# 4 select epochs (validation after 2, 3, 4; tests of the best after 2 and 4), 2 fine-tune.
PHASE_ARG = ("scene=vgg19,select_epochs=4,finetune_epochs=2,val_after=1,val_every=1,"
             "test_every=2")


def _module():
  spec = importlib.util.spec_from_file_location("biam_nus_wide_cfg", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(files, data_dir, weights, arg: str = PHASE_ARG):
  c = _module().get_config(arg)
  c.data.manual_dir = str(files)
  c.data.data_dir = str(data_dir)
  c.data.scene_weights = weights  # VGG19 fc6/fc7 at width 8 (the real file: 4096)
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
  """(official files, data_dir, scene weights file); the dataset is prepared by the chain."""
  base = tmp_path_factory.mktemp("nus_phases")
  weights = write_scene_weights(str(base), seed=4)
  saved = nus.NUM_TRAIN
  nus.NUM_TRAIN = 40  # train80 = 32 images: 4 steps of 8 (one row per simulated device)
  try:
    files = nus.write_files(base / "NUS-WIDE", nus.official_content(seed=3))
  finally:
    nus.NUM_TRAIN = saved
  return files, base / "tfds", weights


def _spec(arg: str = PHASE_ARG) -> str:
  return f"{CONFIG}:{arg}"


def _run(official, workdir, **kw) -> str | None:
  return phases.run_phases(_spec(), tiny_config(*official), str(workdir), **kw)


class Killed(Exception):
  """Stands for a kill: raised from inside training at a chosen moment."""


@contextlib.contextmanager
def killed_after_steps(monkeypatch, steps: int):
  """Training dies (``Killed``) when it asks for its batch number ``steps`` + 1."""
  real = pipeline.prefetch_to_device

  def dying(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs)):
      if i == steps:
        raise Killed()
      yield batch
  monkeypatch.setattr(pipeline, "prefetch_to_device", dying)
  try:
    yield
  finally:
    monkeypatch.setattr(pipeline, "prefetch_to_device", real)


@pytest.fixture(scope="module")
def uninterrupted(official, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("chain")
  table = phases.run_phases(_spec(), tiny_config(*official), str(workdir))
  return workdir, table


def test_chain_runs_the_official_protocol(uninterrupted, official):
  workdir, table = uninterrupted
  # prepared with the VGG19 scene head: stored scene = head(float32 source features)
  config = tiny_config(*official)
  source = get_dataset(config.data)
  assert source.meta.scene_dim == 8 and config.model.scene_source == "dataset"
  head = scene_head.load_scene_head(official[2])
  stored = list(source.as_tf_dataset("test").as_numpy_iterator())
  with h5py.File(pathlib.Path(official[0]) / nus_wide.TEST_H5, "r") as f:
    feats = np.stack([f[ex["image_id"].decode() + "-features"][()].T for ex in stored])
  want = np.asarray(scene_head.scene_from_regions(head, feats.astype(np.float32)))
  got = np.stack([ex["scene"] for ex in stored]).astype(np.float32)
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3)
  assert "scene feature: stored with the dataset (8-d, data.scene='vgg19')" in (
      evaluate.scene_description(config, source.meta))

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
  assert wd.best_checkpoint_manager(str(workdir / "select")).all_steps() == [best["step"]]
  # phase 2 read the full train split (40 images: 5 steps of 8) and tested after each epoch
  ft_config = json.loads((workdir / "finetune" / "config.json").read_text())
  assert ft_config["data"]["train_split"] == "train"
  assert ft_config["train"]["init_from"] == str(workdir / "select" / "best")
  assert ft_config["optimizer"]["schedule"] == "constant"
  finetune = selection.EvalHistory(str(workdir / "finetune"))
  assert [(r["epoch"], r["step"]) for r in finetune.of_kind("test")] == [(1, 5), (2, 10)]
  assert finetune.of_kind("val") == []
  # the final table: one row per test record, the selection, the test-set-choice note
  assert (workdir / wd.FINAL_TABLE).read_text().strip() == table.strip()
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
  """Kills: inside phase 1 (in the window after the best checkpoint of the epoch-3
  validation is written and before its record), between the phases, and inside phase 2
  (after its 7th step); each re-run of the same command resumes, and the last one ends with
  the uninterrupted run's table and histories."""
  reference, table = uninterrupted
  workdir = tmp_path / "chain"

  real_add = selection.EvalHistory.add

  def add_then_die(self, record):
    if record["kind"] == "val" and record["step"] == 12:
      raise Killed()
    real_add(self, record)
  monkeypatch.setattr(selection.EvalHistory, "add", add_then_die)
  with pytest.raises(Killed):
    _run(official, workdir)
  monkeypatch.setattr(selection.EvalHistory, "add", real_add)
  ref_vals = selection.EvalHistory(str(reference / "select")).of_kind("val")
  best_by_12 = selection.best_record([r for r in ref_vals if r["step"] <= 12], "seen/f1@5")
  assert wd.best_checkpoint_manager(str(workdir / "select")).all_steps() == [
      best_by_12["step"]]

  def phase_one_then_die(config, wd):
    train.train_and_evaluate(config, wd)
    raise Killed()
  with pytest.raises(Killed):
    _run(official, workdir, train_fn=phase_one_then_die)
  assert (workdir / "select" / "results.json").exists()
  assert not (workdir / "finetune").exists()

  with killed_after_steps(monkeypatch, 7), pytest.raises(Killed):
    _run(official, workdir)
  assert _run(official, workdir).strip() == table.strip()
  for phase in ("select", "finetune"):
    assert (selection.EvalHistory(str(workdir / phase)).records
            == selection.EvalHistory(str(reference / phase)).records)


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



def test_plateau_learning_rate_by_hand():
  """LESA's LearningRate.adapt worked by hand (EMA from 0, weight 0.5, decay 0.5)."""
  rule = dict(signal=0.5, decay=0.5, min_scale=0.1)
  values = [1.0, 0.0, 0.0, 0.0, 1.0]  # EMA .5, .25, .125, .0625, .53
  assert selection.plateau_learning_rate(values, 1.0, patience=1, **rule) == 0.125
  assert selection.plateau_learning_rate(values, 1.0, patience=2, **rule) == 0.25
  # never decays once below min_scale x the start: .125 -> .0625, then it stays
  assert selection.plateau_learning_rate(values[:4] + [0.0] * 4, 1.0, patience=1,
                                         **rule) == 0.0625
  assert selection.plateau_learning_rate([], 1.0, patience=1, **rule) == 1.0


def _lesa_digits(tmp_path):
  spec = importlib.util.spec_from_file_location(
      "lesa_digits_cfg", CONFIG.parent / "lesa_digits.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke=True")
  c.data.data_dir = str(tmp_path / "tfds")
  c.optimizer.schedule = "val_plateau"
  c.optimizer.plateau_signal, c.optimizer.plateau_patience = 0.5, 1
  c.optimizer.plateau_decay = 0.5
  c.eval.val_split = "test"  # any scored split drives the machinery
  c.eval.val_steps = (2, 4, 6, 8, 10, 12)
  c.eval.test_checkpoint = "latest,best"
  c.train.checkpoint_every_steps = 4
  c.train.keep_checkpoints = 10
  c.train.num_steps = 13  # past the 8-step epochs: a length in steps
  return c


def test_val_plateau_lr_resumes_and_latest_best_tests(tmp_path, monkeypatch):
  """LESA's protocol machinery on digits: validation every 2 steps drives the learning rate
  (scripted metric: up, then falling) and the selection (a tie goes to the later step); a
  kill at step 7 resumes from the step-6 checkpoint with the rate the recorded validations
  imply; the end tests the final and the best."""
  scripted = {2: 0.6, 4: 0.2, 6: 0.1, 8: 0.6, 10: 0.05, 12: 0.02}  # 8 ties 2: 8 wins
  real = evaluate.validation_views

  def fake(trainer, source, state, config, split_name):
    views = real(trainer, source, state, config, split_name)
    views["seen"]["f1@5"] = scripted[int(state.step)]
    return views
  monkeypatch.setattr(evaluate, "validation_views", fake)
  lrs = {}
  real_step = step_lib.Trainer._train_step

  def spy(self, state, batch, label_emb):
    new_state, metrics = real_step(self, state, batch, label_emb)
    jax.debug.callback(lambda s, lr: lrs.setdefault(int(s), float(lr)), state.step,
                       metrics["lr"])
    return new_state, metrics
  monkeypatch.setattr(step_lib.Trainer, "_train_step", spy)

  config = _lesa_digits(tmp_path)
  ref = train.train_and_evaluate(config, str(tmp_path / "whole"))
  for step in range(13):  # the rate step s trains with follows the validations before it
    done = [scripted[v] for v in sorted(scripted) if v <= step]
    want = selection.plateau_learning_rate(done, 1e-3, signal=0.5, patience=1, decay=0.5,
                                           min_scale=1e-3)
    assert lrs[step] == pytest.approx(want, rel=1e-6), step
  assert lrs[12] < lrs[5] < lrs[0]  # it did decay, more than once
  hist = selection.EvalHistory(str(tmp_path / "whole"))
  assert [r["step"] for r in hist.of_kind("val")] == sorted(scripted)
  finals = [r for r in hist.of_kind("test") if r["step"] == 13]
  assert [(r["checkpoint"], r["params_step"]) for r in finals] == [("latest", 13),
                                                                  ("best", 8)]
  assert [r["selected"] for r in hist.of_kind("val")] == [True, False, False, True, False,
                                                         False]
  # the kept best is the state of step 8 (its checkpoint, forced by the validation there)
  best = restore.restore(config, str(tmp_path / "whole"), "best")[2]
  same = restore.restore(config, str(tmp_path / "whole"), 8)[2]
  for x, y in zip(jax.tree.leaves(best), jax.tree.leaves(same)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert json.loads((tmp_path / "whole" / "results.json").read_text())["step"] == 13
  del ref

  # killed after step 7 (last checkpoint: 6, forced by the validation there), then resumed
  with killed_after_steps(monkeypatch, 7), pytest.raises(Killed):
    train.train_and_evaluate(config, str(tmp_path / "killed"))
  whole_lrs = dict(lrs)
  lrs.clear()
  train.train_and_evaluate(config, str(tmp_path / "killed"))
  # resumed from the checkpoint a validation forced at step 6, saved BEFORE that validation
  # lowered the rate: the resumed run still trains with the lowered one
  assert min(lrs) == 6 and lrs == {s: whole_lrs[s] for s in range(6, 13)}
  a = restore.restore(config, str(tmp_path / "whole"))[2]
  b = restore.restore(config, str(tmp_path / "killed"))[2]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert (selection.EvalHistory(str(tmp_path / "killed")).records
          == selection.EvalHistory(str(tmp_path / "whole")).records)
