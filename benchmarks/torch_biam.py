"""BiAM in PyTorch, eager and NCHW as the official code runs it (``shared/spec/biam.md``), for
side-by-side checks and timings against ``mlzsl_jax.models.biam.BiAM``.

Written from the spec, module names mirror ours so that ``load_from_flax`` can copy our
parameters over. As in the official ``model.py``: the scene projection ``w_g`` is a 1x1
``Conv2d`` on ``x_g`` viewed as ``[B, 4096, 1, 1]``; heads split the channels as
``[heads, d_k]`` (head-major); BatchNorm2d(eps 1e-3, momentum 0.99). One deliberate
difference: the official SCB runs ``channel_conv`` twice (once for ``q_g``, once for the equal
``v_g``); here it runs once, which can only make this model faster.

Needs torch (not a project dependency): ``.venv/bin/pip install torch``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TORCH_BN_MOMENTUM = 0.99  # official BatchNorm2d(momentum=0.99)
BN_EPS = 1e-3


class ConvReluBN(nn.Module):
  """conv3x3 (padding 1) -> ReLU -> BatchNorm2d, in this order (official CONV3_3)."""

  def __init__(self, in_ch: int, out_ch: int):
    super().__init__()
    self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
    self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=TORCH_BN_MOMENTUM)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [B, in_ch, H, W] -> [B, out_ch, H, W]."""
    return self.bn(F.relu(self.conv(x)))


class RegionContextBlock(nn.Module):
  """Multi-head self-attention over regions with 1x1-conv projections, + feed-forward."""

  def __init__(self, ch: int, heads: int, *, dropout: float, mask_zero_scores: bool):
    super().__init__()
    if ch % heads:
      raise ValueError(f"channels={ch} must be divisible by heads={heads}")
    self.ch, self.heads, self.d_k = ch, heads, ch // heads
    self.mask_zero_scores = mask_zero_scores
    for name in ("w_q", "w_k", "w_v", "w_o"):
      setattr(self, name, nn.Conv2d(ch, ch, 1))
    self.ff1 = nn.Conv2d(ch, 2 * ch, 1)
    self.ff2 = nn.Conv2d(2 * ch, ch, 1)
    self.attn_dropout = nn.Dropout(dropout)
    self.out_dropout = nn.Dropout(dropout)

  def forward(self, h_r: torch.Tensor) -> torch.Tensor:
    """h_r: [B, C, H, W] -> e_r: [B, C, H, W]."""
    b, c, gh, gw = h_r.shape

    def split_heads(x):  # [B, C, H, W] -> [B, heads, regions, d_k]
      return x.reshape(b, self.heads, self.d_k, gh * gw).transpose(2, 3)

    q, k, v = (split_heads(f(h_r)) for f in (self.w_q, self.w_k, self.w_v))
    logits = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
    if self.mask_zero_scores:  # official quirk: an exact 0 counts as "masked"
      logits = logits.masked_fill(logits == 0, -1e9)
    attn = self.attn_dropout(F.softmax(logits, dim=-1))
    o_r = torch.matmul(attn, v)  # [B, heads, regions, d_k]
    o_r = o_r.transpose(2, 3).reshape(b, c, gh, gw)  # channel = head * d_k + j
    o_r = self.out_dropout(self.w_o(o_r)) + h_r
    return self.ff2(F.relu(self.ff1(o_r))) + o_r


class SceneContextBlock(nn.Module):
  """Scene-gated channel reweighting of the region features, plus a conv refinement."""

  def __init__(self, ch: int, scene_dim: int, *, dropout: float):
    super().__init__()
    self.channel_conv = nn.Conv2d(ch, ch, 1)
    self.w_g = nn.Conv2d(scene_dim, ch, 1)  # official: a 1x1 conv on [B, 4096, 1, 1]
    self.scene_dropout = nn.Dropout(dropout)
    self.refine = ConvReluBN(ch, ch)

  def forward(self, h_r: torch.Tensor, x_g: torch.Tensor) -> torch.Tensor:
    """h_r: [B, C, H, W], x_g: [B, S] -> e_g: [B, C, H, W]."""
    b, c = h_r.shape[:2]
    q_g = v_g = F.leaky_relu(self.channel_conv(h_r), 0.2)
    k_g = self.w_g(self.scene_dropout(x_g)[:, :, None, None]).reshape(b, c)
    r_g = torch.sigmoid(q_g.mean(dim=(2, 3)) * k_g)  # [B, C]
    c_g = r_g[:, :, None, None] * v_g
    return c_g + self.refine(c_g)


class TorchBiAM(nn.Module):
  """BiAM. forward(feats [B, R, C_in], label_emb [L, E], scene [B, S]) -> scores [B, L]."""

  def __init__(self, *, feature_dim: int, emb_dim: int, grid_shape: tuple[int, int],
               scene_dim: int, channels: int = 256, heads: int = 8, out_dim: int = 512,
               top_k: int = 6, mask_zero_scores: bool = True, attn_dropout: float = 0.1,
               scene_dropout: float = 0.2):
    super().__init__()
    self.feature_dim, self.grid_shape, self.top_k = feature_dim, tuple(grid_shape), top_k
    self.stem = ConvReluBN(feature_dim, channels)
    self.region_context = RegionContextBlock(channels, heads, dropout=attn_dropout,
                                             mask_zero_scores=mask_zero_scores)
    self.scene_context = SceneContextBlock(channels, scene_dim, dropout=scene_dropout)
    self.fuse = nn.Conv2d(2 * channels, out_dim, 1)
    self.label_proj = nn.Linear(emb_dim, out_dim)

  def forward(self, feats: torch.Tensor, label_emb: torch.Tensor,
              scene: torch.Tensor) -> torch.Tensor:
    """feats: [B, R, C_in] (row-major regions), label_emb: [L, E], scene: [B, S]
    -> scores [B, L]: mean of the top-k region scores."""
    region = self.region_scores(feats, label_emb, scene)
    return torch.topk(region, self.top_k, dim=1)[0].mean(dim=1)

  def region_scores(self, feats: torch.Tensor, label_emb: torch.Tensor,
                    scene: torch.Tensor) -> torch.Tensor:
    """feats: [B, R, C_in], label_emb: [L, E], scene: [B, S] -> region scores [B, R, L]."""
    b, r, c_in = feats.shape
    gh, gw = self.grid_shape
    if r != gh * gw or c_in != self.feature_dim:
      raise ValueError(f"features: expected [batch, {gh * gw}, {self.feature_dim}], "
                       f"got {tuple(feats.shape)}")
    x_r = feats.transpose(1, 2).reshape(b, c_in, gh, gw)  # NCHW, as the official files
    h_r = self.stem(x_r)
    e_r = self.region_context(h_r)
    e_g = self.scene_context(h_r, scene)
    e_f = F.leaky_relu(self.fuse(torch.cat([e_r, e_g], dim=1)), 0.2)  # [B, D, H, W]
    e_f = e_f.permute(0, 2, 3, 1).reshape(b, r, -1)  # [B, R, D]
    return torch.einsum("brd,ld->brl", e_f, self.label_proj(label_emb))


def ranking_loss(scores: torch.Tensor, states: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
  """Pairwise hinge ranking loss of spec/biam.md. scores: [B, L] float, states: [B, L] in
  {1, -1, 0} -> scalar: mean over images of sum(max(0, 1 + s_n - s_p)) over (p, n) pairs,
  divided by (the number of pairs with a positive hinge + eps)."""
  pos = (states > 0).to(scores.dtype)
  neg = (states < 0).to(scores.dtype)
  pair_mask = pos[:, None, :] * neg[:, :, None]  # [B, negatives, positives]
  hinge = torch.clamp(pair_mask * (1.0 + scores[:, :, None] - scores[:, None, :]), min=0)
  violations = torch.sign(hinge).sum(dim=(1, 2))
  return torch.mean(hinge.sum(dim=(1, 2)) / (violations + eps))


def make_optimizer(model: nn.Module, *, lr: float = 1e-3, betas=(0.9, 0.999),
                   eps: float = 1e-8, weight_decay: float = 5e-4) -> torch.optim.Adam:
  """torch.optim.Adam with L2 in the gradient (the official optimizer and values)."""
  return torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps,
                          weight_decay=weight_decay)


def train_step(model: TorchBiAM, optimizer: torch.optim.Optimizer,
               batch: Mapping[str, torch.Tensor], label_emb: torch.Tensor) -> torch.Tensor:
  """One eager step: forward (train mode), ranking loss, backward, optimizer step.
  batch: features [B, R, C_in], labels [B, L], scene [B, S]; label_emb [L, E] -> loss."""
  model.train()
  optimizer.zero_grad(set_to_none=True)
  loss = ranking_loss(model(batch["features"], label_emb, batch["scene"]), batch["labels"])
  loss.backward()
  optimizer.step()
  return loss.detach()


# flax leaf name -> torch attribute name (kernels, BN scale/stats)
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def _to_torch_layout(value: np.ndarray, target_shape: tuple[int, ...], name: str) -> np.ndarray:
  """Flax layouts -> torch: conv HWIO -> OIHW; linear [in, out] -> [out, in] (or, for a
  1x1 conv that a flax Linear stands for, [out, in, 1, 1]); vectors unchanged."""
  if value.ndim == 4:
    value = value.transpose(3, 2, 0, 1)
  elif value.ndim == 2:
    value = value.T
    if len(target_shape) == 4:
      value = value[:, :, None, None]
  if tuple(value.shape) != tuple(target_shape):
    raise ValueError(f"{name}: flax value has shape {value.shape} after layout change; "
                     f"the torch model expects {tuple(target_shape)}")
  return value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, path + "/"))
    else:
      out[path] = np.asarray(value, np.float32)
  return out


def load_from_flax(torch_model: TorchBiAM, flax_params: Mapping[str, Any],
                   flax_batch_stats: Mapping[str, Any]) -> None:
  """Copies our BiAM's parameters (``nnx.to_pure_dict`` of the Params, e.g.
  ``TrainState.params``) and BatchNorm statistics (``TrainState.model_state``) into
  ``torch_model``, in place. Every torch parameter and BN buffer must be set exactly once."""
  targets = dict(torch_model.named_parameters())
  targets.update({k: v for k, v in torch_model.named_buffers()
                  if not k.endswith("num_batches_tracked")})
  done = set()
  for path, value in {**_flatten(flax_params), **_flatten(flax_batch_stats)}.items():
    *modules, leaf = path.split("/")
    if leaf not in _LEAF_NAMES:
      raise ValueError(f"flax leaf {path!r}: unknown name {leaf!r}; "
                       f"expected one of {sorted(_LEAF_NAMES)}")
    name = ".".join(modules + [_LEAF_NAMES[leaf]])
    if name not in targets:
      raise ValueError(f"flax leaf {path!r}: the torch model has no {name!r}")
    with torch.no_grad():
      targets[name].copy_(torch.tensor(_to_torch_layout(value, targets[name].shape, path)))
    done.add(name)
  missing = sorted(set(targets) - done)
  if missing:
    raise ValueError(f"torch tensors not set from the flax tree: {missing}")


def flax_layout_grads(torch_model: TorchBiAM,
                      flax_params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Gradients of the torch parameters in flax layout and shape (those of the matching
  leaves of ``flax_params``), keyed by flax path ('stem/conv/kernel'); for comparison with
  ``jax.grad`` of our model."""
  shapes = {k: v.shape for k, v in _flatten(flax_params).items()}
  inverse = {"weight": "kernel", "bias": "bias"}
  out = {}
  for name, p in torch_model.named_parameters():
    if p.grad is None:
      continue
    *modules, leaf = name.split(".")
    g = p.grad.detach().cpu().numpy()
    is_bn = isinstance(torch_model.get_submodule(".".join(modules)), nn.BatchNorm2d)
    key = "/".join(modules + ["scale" if is_bn and leaf == "weight" else inverse[leaf]])
    if g.ndim == 4:
      g = g.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif g.ndim == 2:
      g = g.T
    out[key] = g.reshape(shapes[key])  # a 1x1 conv [1, 1, in, out] standing for a Linear
  return out
