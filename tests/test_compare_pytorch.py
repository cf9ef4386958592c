"""Our BiAM (Flax NNX, jitted Trainer step) against an eager PyTorch BiAM written from
spec/biam.md (benchmarks/torch_biam.py), on shared weights at tiny shapes: eval scores, the
train-mode loss and every gradient, BatchNorm running stats and one torch-Adam update."""

import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from mlzsl_jax import step as step_lib
from mlzsl_jax import sharding as shd
from mlzsl_jax import train
from mlzsl_jax.config_base import base_config
from mlzsl_jax.data.source import DatasetMeta
from references import ranking_loss_ref

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import torch_biam  # noqa: E402  (needs torch)

GRID, FEAT, CH, HEADS, SEEN, EMB, SCENE, BATCH = (4, 4), 16, 8, 2, 5, 6, 12, 4


def tiny_config():
  c = base_config()
  c.data.name = "shapes_only"
  c.data.embedding = "glove"
  c.data.seen_labels = tuple(range(SEEN))
  c.data.unseen_labels = (SEEN,)
  c.model.channels, c.model.heads, c.model.out_dim, c.model.top_k = CH, HEADS, 10, 3
  c.model.attn_dropout = c.model.scene_dropout = 0.0
  c.optimizer.schedule = "constant"
  c.train.batch_size = BATCH
  return c


def tiny_meta() -> DatasetMeta:
  emb = np.random.default_rng(1).normal(size=(SEEN + 1, EMB)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return DatasetMeta(name="tiny", label_names=tuple(map(str, range(SEEN + 1))),
                     embeddings={"glove": emb}, grid_shape=GRID, feature_dim=FEAT,
                     scene_dim=SCENE, num_examples={})


def tiny_batch() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(2)
  labels = rng.choice(np.array([1, -1, 0], np.int8), size=(BATCH, SEEN), p=[0.3, 0.5, 0.2])
  labels[:, 0] = 1
  labels[:, 1] = -1
  return {"features": rng.normal(size=(BATCH, GRID[0] * GRID[1], FEAT)).astype(np.float32),
          "labels": labels, "scene": rng.normal(size=(BATCH, SCENE)).astype(np.float32)}


def to_torch(batch):
  return {k: torch.tensor(np.asarray(v, np.float32)) for k, v in batch.items()}


def flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
  return out


def close(got, want, tol, what, floor=0.0):
  """|got - want| <= tol * max(|want|, 1e-3 of the largest |want|, floor), elementwise."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = np.maximum(np.abs(want), max(1e-3 * np.abs(want).max(), floor))
  err = np.max(np.abs(got - want) / scale)
  assert err <= tol, f"{what}: max relative error {err:.2e} > {tol:.0e}"


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  mesh = shd.make_mesh(1, 1, jax.devices()[:1])
  trainer = step_lib.Trainer(config, tiny_meta(), mesh, steps_per_epoch=10)
  state = trainer.init_state()
  params, model_state = jax.device_get((state.params, state.model_state))
  model = torch_biam.TorchBiAM(feature_dim=FEAT, emb_dim=EMB, grid_shape=GRID,
                               scene_dim=SCENE, channels=CH, heads=HEADS, out_dim=10,
                               top_k=3, attn_dropout=0.0, scene_dropout=0.0)
  torch_biam.load_from_flax(model, params, model_state)
  return trainer, state, params, model_state, model, tiny_batch()


def test_parameter_count_matches(setup):
  _, _, params, _, model, _ = setup
  assert sum(p.numel() for p in model.parameters()) == sum(
      v.size for v in jax.tree.leaves(params))


def test_eval_scores_match(setup):
  trainer, _, params, model_state, model, batch = setup
  ours = trainer.predict(params, model_state, batch, (trainer.emb_seen,))[0]
  model.eval()
  tb = to_torch(batch)
  with torch.no_grad():
    theirs = model(tb["features"], torch.tensor(trainer.emb_seen), tb["scene"])
  close(ours, theirs.numpy(), 1e-5, "eval scores")


def test_torch_ranking_loss_matches_numpy_loops():
  rng = np.random.default_rng(3)
  scores = rng.normal(size=(3, 7)).astype(np.float32)
  states = rng.choice(np.array([1, -1, 0]), size=(3, 7))
  got = torch_biam.ranking_loss(torch.tensor(scores), torch.tensor(states))
  close(float(got), ranking_loss_ref(scores, states), 1e-6, "torch ranking loss")


def test_train_loss_gradients_and_adam_step_match(setup):
  trainer, state, params, model_state, _, batch = setup
  emb = trainer.emb_seen

  def loss_of(p, s):  # the loss of Trainer._train_step (dropout rates are 0 here)
    model = nnx.merge(trainer.graphdef, p, s)
    out = model(batch["features"], emb, batch["scene"], train=True,
                rngs=nnx.Rngs(dropout=jax.random.key(0)))
    return trainer.loss_fn(out, batch["labels"], trainer.config.loss)[0]
  loss, grads = jax.jit(jax.value_and_grad(loss_of))(params, model_state)

  # torch: a fresh copy of the same weights, one eager train step (train-mode BN, Adam)
  model = torch_biam.TorchBiAM(feature_dim=FEAT, emb_dim=EMB, grid_shape=GRID,
                               scene_dim=SCENE, channels=CH, heads=HEADS, out_dim=10,
                               top_k=3, attn_dropout=0.0, scene_dropout=0.0)
  torch_biam.load_from_flax(model, params, model_state)
  opt = torch_biam.make_optimizer(model)
  t_loss = torch_biam.train_step(model, opt, to_torch(batch), torch.tensor(emb))
  close(float(loss), float(t_loss), 1e-4, "train-mode loss")
  t_grads = torch_biam.flax_layout_grads(model, params)
  ours = flat(grads)
  assert sorted(ours) == sorted(t_grads)
  # some gradients are 0 up to rounding (e.g. w_k's bias: softmax ignores a per-row shift)
  floor = 1e-3 * max(np.abs(g).max() for g in t_grads.values())
  for key in ours:
    close(ours[key], t_grads[key], 1e-4, f"gradient {key}", floor)

  # the library's jitted step (a copy of the state: the step donates its input)
  new_state, metrics = trainer.train_step(jax.tree.map(lambda x: x.copy(), state), batch, emb)
  close(float(metrics["loss"]), float(t_loss), 1e-4, "Trainer step loss")
  t_norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in t_grads.values()))
  close(float(metrics["grad_norm"]), t_norm, 1e-4, "Trainer step grad_norm")
  t_state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  n = BATCH * GRID[0] * GRID[1]
  for name, path in (("stem.bn", "stem/bn"), ("scene_context.refine.bn",
                                              "scene_context/refine/bn")):
    new = flat(jax.device_get(new_state.model_state))
    close(new[f"{path}/mean"], t_state[f"{name}.running_mean"], 1e-4, f"{path} mean")
    # torch moves the running variance toward the unbiased batch variance (n / (n - 1)),
    # ours toward the biased one; old var 1, weight 0.99 on the batch.
    t_var = 0.01 + (t_state[f"{name}.running_var"] - 0.01) * (n - 1) / n
    close(new[f"{path}/var"], t_var, 1e-4, f"{path} var")
  new_params = flat(jax.device_get(new_state.params))
  t_params = {k: v.detach().numpy() for k, v in model.named_parameters()}
  old = flat(params)
  for key, value in new_params.items():  # compare the updates (new - old), lr 1e-3
    *mods, leaf = key.split("/")
    t_name = ".".join(mods + ["bias" if leaf == "bias" else "weight"])
    t_new = t_params[t_name]
    if t_new.ndim == 4:
      t_new = t_new.transpose(2, 3, 1, 0)
    elif t_new.ndim == 2:
      t_new = t_new.T
    np.testing.assert_allclose(value - old[key], t_new.reshape(value.shape) - old[key],
                               atol=2e-7, err_msg=f"Adam update of {key}")
