"""Train step: same loss and parameters on 1 device, 8 devices and a 4x2 mesh; optimizer and
schedule semantics; config and workdir errors."""

import math
import os

import jax
import numpy as np
import pytest

from mlzsl_jax import workdir as wd
from mlzsl_jax import step as step_lib
from mlzsl_jax import sharding as shd
from mlzsl_jax import train
from references import tiny_batch, tiny_meta, train_steps
from references import tiny_biam_config as tiny_config


def run_steps(mesh, n_steps=2):
  trainer = step_lib.Trainer(tiny_config(), tiny_meta(), mesh, steps_per_epoch=1)
  state, metrics = train_steps(trainer, tiny_batch, n_steps)
  return ([float(m["loss"]) for m in metrics], jax.device_get(state.params),
          jax.device_get(state.model_state))


def test_one_device_eight_devices_and_4x2_mesh_agree():
  assert jax.device_count() == 8
  ref_losses, ref_params, ref_stats = run_steps(shd.make_mesh(devices=jax.devices()[:1]))
  for data, model in ((8, 1), (4, 2)):
    mesh = shd.make_mesh(data, model)
    losses, params, stats = run_steps(mesh)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(ref_stats)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert ref_losses[0] > 0


def test_model_axis_really_shards_parameters():
  trainer = step_lib.Trainer(tiny_config(), tiny_meta(), shd.make_mesh(4, 2), steps_per_epoch=1)
  kernel = trainer.init_state().params["stem"]["conv"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "model")
  assert kernel.addressable_shards[0].data.shape[-1] == kernel.shape[-1] // 2


def test_optimizer_is_adam_with_l2_added_to_the_gradient():
  c = tiny_config().optimizer
  tx = step_lib.make_optimizer(c, lambda step: c.lr)  # optimizer.name = "adam"
  p = {"w": np.array([1.0, -2.0, 0.5])}
  g = {"w": np.array([0.3, 0.1, -0.2])}
  state = tx.init(p)
  updates, state = tx.update(g, state, p)
  gg = g["w"] + c.weight_decay * p["w"]
  m, v = (1 - c.b1) * gg, (1 - c.b2) * gg ** 2
  expected = -c.lr * (m / (1 - c.b1)) / (np.sqrt(v / (1 - c.b2)) + c.eps)
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


def test_warmup_cosine_schedule_per_epoch():
  c = tiny_config().optimizer
  c.lr, c.lr_min, c.warmup_epochs = 1e-3, 5e-4, 3
  sched = step_lib.lr_schedule(c, steps_per_epoch=10, num_epochs=40)
  for epoch in range(40):
    if epoch < 3:
      want = c.lr * (epoch + 1) / 3
    else:
      want = c.lr_min + (c.lr - c.lr_min) * (1 + math.cos(math.pi * (epoch - 3) / 37)) / 2
    for step in (epoch * 10, epoch * 10 + 9):
      np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5)


def test_label_split_errors_name_the_field():
  meta = tiny_meta()
  c = tiny_config()
  c.data.unseen_labels = (7, 8, 12)
  with pytest.raises(ValueError, match=r"data.unseen_labels: label ids \[12\] out of range"):
    step_lib.label_split(c, meta)
  c.data.unseen_labels = (6, 7)
  with pytest.raises(ValueError, match="share ids"):
    step_lib.label_split(c, meta)


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if os.access(locked, os.W_OK):  # running as root: permissions do not bind
      target = "/proc/mlzsl_workdir"
    else:
      target = str(locked / "run")
    with pytest.raises(PermissionError, match="--workdir .* cannot create or write"):
      wd.ensure_workdir(target)
  finally:
    locked.chmod(0o700)


def test_missing_embedding_source_is_a_clear_error():
  c = tiny_config()
  c.data.embedding = "glove"
  with pytest.raises(ValueError, match="no label embedding source 'glove'"):
    step_lib.Trainer(c, tiny_meta(), shd.make_mesh(devices=jax.devices()[:1]), 1)


def test_unknown_names_in_registries_name_the_config_field():
  from mlzsl_jax import losses
  from mlzsl_jax.data.source import get_dataset
  from mlzsl_jax.models import get_model_builder
  with pytest.raises(ValueError, match=r"model.name='biamm': unknown model; registered: "
                                       r"\[.*'biam'.*\]"):
    get_model_builder("biamm")
  with pytest.raises(ValueError, match="loss.name='rank': unknown loss"):
    losses.get_loss("rank")
  c = tiny_config()
  c.data.name = "nus_wide_typo"
  with pytest.raises(ValueError, match="data.name='nus_wide_typo': unknown dataset"):
    get_dataset(c.data)
