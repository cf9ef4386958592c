"""DEM (Zhang, Xiang & Gong, CVPR 2017): a deep embedding from the semantic space INTO the
visual feature space; an image is scored against each label by the distance between its
(pooled) visual feature and the label's embedded prototype. Follows ``shared/spec/baselines.md``
("DEM") and the official TF1 code ``lzrobots/DeepEmbeddingModel_ZSL``.

Semantic -> visual, by ``model.variant``:

- ``'single'``: ``v_j = ReLU(W2 · ReLU(W1 · y_j + b1) + b2)`` (``AwA1_GBU.py``...); with
  ``model.hidden = 0`` a single layer ``ReLU(W · y_j + b)`` (``AwA_wordvector.py``).
- ``'fusion'``: one first-layer branch per semantic source, ``a_s = act(W_s · y_s + b_s)``,
  combined as ``Σ_s weight_s · a_s`` and mapped by the shared layer ``ReLU(W_c · . + b_c)``
  (``AwA_fusion.py``: ``tanh`` branches, ``word + 3 · att``). A source named in
  ``model.text_sources`` gets a text branch (below) instead of a dense one.
- ``'text'``: a class description (token ids) is encoded by a bidirectional LSTM; the final
  forward and backward states give ``t = act(W_f · h_fwd + W_b · h_bwd + b)`` (the paper's
  encoder; the official repo has no code for it), then the shared ``ReLU(W2 · t + b2)``.
  The text branch takes the place of the first layer ``ReLU(W1 · y + b1)``: the slides'
  activations ReLU (single) / tanh (fused) are exactly those of the first layer of the single
  and fused models.

Outputs (multi-label extension): ``scores [B, L] = -||pool(F_i) - v_j||²`` (or the cosine),
the squared distances, the prototypes, the pooled visual features and the official weight
decay ``λ · Σ ½||θ||²`` over weights AND biases (TF ``l2_loss``) as ``'regularizer'``.
Loss ``'dem_embedding'``: the official ``reduce_mean(square(v - φ))`` over positive
(image, label) pairs and visual dimensions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mlzsl_jax import losses
from mlzsl_jax.models import layers
from mlzsl_jax.models.registry import register_model

VARIANTS = ("single", "fusion", "text")
POOLS = ("mean", "max")
METRICS = ("euclidean", "cosine")
ACTIVATIONS = ("relu", "tanh", "scaled_tanh")
# LeCun et al., "Efficient BackProp" (1998): f(x) = 1.7159 · tanh(2x / 3), the usual meaning
# of "scaled hyperbolic tangent" (f(±1) = ±1, unit gain near 0).
LECUN_TANH_SCALE = 1.7159
LECUN_TANH_SLOPE = 2.0 / 3.0
# Official initialisers: tf.truncated_normal(stddev=0.1) (redrawn beyond 2 stddev; the same
# as jax.nn.initializers.truncated_normal) and tf.constant(0.1) for biases.
OFFICIAL_INIT_STDDEV = 0.1
OFFICIAL_INIT_BIAS = 0.1


class Activation:
  """'relu', 'tanh' or 'scaled_tanh' (``scale · tanh(slope · x)``), as a hashable static
  value; ``field`` names the config field for the error message."""

  def __init__(self, name: str, field: str, *, scale: float = LECUN_TANH_SCALE,
               slope: float = LECUN_TANH_SLOPE):
    if name not in ACTIVATIONS:
      raise ValueError(f"config field {field}={name!r}: expected one of {ACTIVATIONS}")
    self.name, self.scale, self.slope = name, float(scale), float(slope)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.name == "relu":
      return jax.nn.relu(x)
    if self.name == "tanh":
      return jnp.tanh(x)
    return self.scale * jnp.tanh(self.slope * x)

  def _key(self):
    return (self.name, self.scale, self.slope)

  def __eq__(self, other) -> bool:
    return isinstance(other, Activation) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def __repr__(self) -> str:
    return f"Activation{self._key()}"


def _dense(in_dim: int, out_dim: int, *, use_bias: bool = True, init_stddev: float,
           init_bias: float, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """``x · W + b`` initialised as the official code (truncated normal, constant bias)."""
  return nnx.Linear(in_dim, out_dim, use_bias=use_bias,
                    kernel_init=jax.nn.initializers.truncated_normal(init_stddev),
                    bias_init=jax.nn.initializers.constant(init_bias), dtype=dtype,
                    rngs=rngs)


def half_sq_norm(module: nnx.Module) -> jax.Array:
  """TF ``l2_loss`` summed over every parameter of ``module``: Σ ½||θ||² (float32 scalar)."""
  leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
  return sum((0.5 * jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves),
             jnp.zeros([], jnp.float32))


def is_concrete(x) -> bool:
  """True when ``x`` holds values (numpy or a committed jax array), False under a trace."""
  return not isinstance(x, jax.core.Tracer)


class DenseBranch(nnx.Module):
  """One semantic source's first layer: ``act(y · W + b)``, ``y [L, E] -> [L, out_dim]``."""

  def __init__(self, in_dim: int, out_dim: int, activation: Activation, *, init_stddev: float,
               init_bias: float, dtype, rngs: nnx.Rngs):
    self.in_dim = in_dim
    self.activation = activation
    self.linear = _dense(in_dim, out_dim, init_stddev=init_stddev, init_bias=init_bias,
                         dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, y: jax.Array, source: str) -> jax.Array:
    """y: [labels, in_dim] -> [labels, out_dim]."""
    if y.ndim != 2 or y.shape[-1] != self.in_dim:
      raise ValueError(f"label embeddings {source!r}: expected [labels, {self.in_dim}], "
                       f"got {tuple(y.shape)}")
    return self.activation(self.linear(y.astype(self.dtype)))


class LSTM(nnx.Module):
  """One direction of an LSTM over a padded batch of sequences, with masking.

  Per step (gate order i, f, g, o along the 4·H axis):
    z = x_t · W_x + h · W_h + b;  i, f, o = σ(z_i), σ(z_f), σ(z_o);  g = tanh(z_g)
    c' = f ⊙ c + i ⊙ g;  h' = o ⊙ tanh(c')
  A masked (padding) step leaves (h, c) unchanged, so the final state is the state after the
  last real token in the scan direction, wherever the padding sits. Initialisation: PyTorch's
  LSTM default U(-1/√H, 1/√H) for W_x, W_h and b, then +1 on the forget-gate bias (the
  ``forget_bias=1.0`` of TF's LSTM cells).
  """

  def __init__(self, in_dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.hidden = hidden
    init = layers.torch_bias_init(hidden)  # U(-1/sqrt(H), 1/sqrt(H)) for any shape

    def bias_init(key, shape, dtype=jnp.float32):
      return init(key, shape, dtype).at[hidden:2 * hidden].add(1.0)

    self.input = nnx.Linear(in_dim, 4 * hidden, use_bias=True, kernel_init=init,
                            bias_init=bias_init, dtype=dtype, rngs=rngs)
    self.recurrent = nnx.Linear(hidden, 4 * hidden, use_bias=False, kernel_init=init,
                                dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x: jax.Array, mask: jax.Array, *, reverse: bool) -> jax.Array:
    """x: [N, T, D], mask: [N, T] bool -> final hidden state [N, H]."""
    n, h_dim = x.shape[0], self.hidden
    xs = jnp.swapaxes(self.input(x), 0, 1)  # [T, N, 4H]
    w_h = self.recurrent.kernel[...].astype(self.dtype)

    def step(carry, inputs):
      h, c = carry
      x_t, m_t = inputs
      z = x_t + h @ w_h
      i, f, g, o = jnp.split(z, 4, axis=-1)
      c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
      keep = m_t[:, None]
      return (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)), None

    zeros = jnp.zeros((n, h_dim), xs.dtype)
    (h, _), _ = jax.lax.scan(step, (zeros, zeros), (xs, jnp.swapaxes(mask, 0, 1)),
                             reverse=reverse)
    return h


class TextBranch(nnx.Module):
  """A class description's first layer: token ids ``[L, T]`` (0 = padding) -> token table ->
  bidirectional LSTM -> ``act(W_f · h_fwd + W_b · h_bwd + b)`` ``[L, out_dim]``.

  Ids arrive as floats (label inputs are float arrays) and are rounded to int32. When the
  array is concrete (eager calls) an id outside [0, vocab_size) or a non-integer raises a
  ValueError; under ``jit`` that check is impossible, so an out-of-range id instead turns its
  label's prototype into NaN (``jnp.take(mode='fill')``), which surfaces in the loss/scores.
  The token table is N(0, 1) (PyTorch ``nn.Embedding``); row 0 (padding) is never read.
  """

  def __init__(self, out_dim: int, activation: Activation, *, vocab_size: int, token_dim: int,
               lstm_dim: int, init_stddev: float, init_bias: float, dtype, rngs: nnx.Rngs):
    if vocab_size < 2:
      raise ValueError(f"config field model.vocab_size={vocab_size}: a text source needs "
                       "vocab_size >= 2 (id 0 is padding)")
    for field, value in (("token_dim", token_dim), ("lstm_dim", lstm_dim)):
      if value < 1:
        raise ValueError(f"config field model.{field}={value}: expected >= 1")
    self.vocab_size = vocab_size
    self.activation = activation
    self.embedding = nnx.Param(jax.random.normal(rngs.params(), (vocab_size, token_dim)))
    self.fwd = LSTM(token_dim, lstm_dim, dtype=dtype, rngs=rngs)
    self.bwd = LSTM(token_dim, lstm_dim, dtype=dtype, rngs=rngs)
    self.out_fwd = _dense(lstm_dim, out_dim, init_stddev=init_stddev, init_bias=init_bias,
                          dtype=dtype, rngs=rngs)
    self.out_bwd = _dense(lstm_dim, out_dim, use_bias=False, init_stddev=init_stddev,
                          init_bias=init_bias, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def check_ids(self, ids, source: str) -> None:
    """ValueError if concrete ``ids`` are not integers in [0, vocab_size)."""
    if not is_concrete(ids):
      return
    arr = np.asarray(ids, np.float64)
    bad = (arr != np.round(arr)) | (arr < 0) | (arr >= self.vocab_size)
    if bad.any():
      raise ValueError(f"label inputs {source!r}: token ids must be integers in "
                       f"[0, model.vocab_size={self.vocab_size}); got e.g. {arr[bad][:3]}")

  def encode(self, ids: jax.Array, source: str) -> tuple[jax.Array, jax.Array]:
    """ids: [L, T] -> (h_fwd [L, lstm_dim], h_bwd [L, lstm_dim])."""
    if ids.ndim != 2:
      raise ValueError(f"label inputs {source!r}: expected token ids [labels, tokens], "
                       f"got shape {tuple(ids.shape)}")
    self.check_ids(ids, source)
    ids = jnp.round(jnp.asarray(ids)).astype(jnp.int32)
    mask = ids != 0
    x = jnp.take(self.embedding[...], ids, axis=0, mode="fill",
                 fill_value=jnp.nan).astype(self.dtype)  # [L, T, token_dim]
    return self.fwd(x, mask, reverse=False), self.bwd(x, mask, reverse=True)

  def __call__(self, ids: jax.Array, source: str) -> jax.Array:
    """ids: [labels, tokens] float token ids -> [labels, out_dim]."""
    h_fwd, h_bwd = self.encode(ids, source)
    return self.activation(self.out_fwd(h_fwd) + self.out_bwd(h_bwd))


class DEM(nnx.Module):
  """DEM. Call: (feats [B, R, C], label_emb [L, E] or {source: [L, E_s]}) -> outputs dict."""

  def __init__(self, *, feature_dim: int, emb_dim: int | dict[str, int],
               variant: str = "single", hidden: int = 1600, visual_dim: int | None = 0,
               pool: str = "mean", metric: str = "euclidean", l2_lambda: float = 1e-3,
               init_stddev: float = OFFICIAL_INIT_STDDEV,
               init_bias: float = OFFICIAL_INIT_BIAS,
               fusion_sources: tuple[str, ...] = ("attributes", "sentence"),
               fusion_weights: tuple[float, ...] = (3.0, 1.0),
               fusion_activation: str = "tanh",
               fusion_tanh_scale: float = LECUN_TANH_SCALE,
               fusion_tanh_slope: float = LECUN_TANH_SLOPE,
               fusion_l2_lambdas: tuple[float, ...] = (1e-2, 1e-3),
               text_sources: tuple[str, ...] = (), vocab_size: int = 0,
               token_dim: int = 300, lstm_dim: int = 512, text_activation: str = "relu",
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if variant not in VARIANTS:
      raise ValueError(f"config field model.variant={variant!r}: expected one of {VARIANTS}")
    if pool not in POOLS:
      raise ValueError(f"config field model.pool={pool!r}: expected one of {POOLS}")
    if metric not in METRICS:
      raise ValueError(f"config field model.metric={metric!r}: expected one of {METRICS}")
    if visual_dim not in (None, 0, feature_dim):
      raise ValueError(f"config field model.visual_dim={visual_dim}: DEM regresses onto the "
                       f"image features, so it must be 0 (= feature_dim) or {feature_dim}")
    if hidden < 0 or (hidden == 0 and variant != "single"):
      raise ValueError(f"config field model.hidden={hidden}: expected >= 1 (0, a single "
                       "layer, only for model.variant='single')")
    self.variant, self.pool, self.metric = variant, pool, metric
    self.feature_dim = feature_dim
    self.dtype = dtype
    kw = dict(init_stddev=init_stddev, init_bias=init_bias, dtype=dtype, rngs=rngs)
    text_kw = dict(vocab_size=vocab_size, token_dim=token_dim, lstm_dim=lstm_dim, **kw)
    branches, weights, lambdas = {}, {}, {}
    if variant == "fusion":
      sources = tuple(fusion_sources)
      self._check_fusion(sources, emb_dim, fusion_weights, fusion_l2_lambdas, text_sources)
      act = Activation(fusion_activation, "model.fusion_activation",
                       scale=fusion_tanh_scale, slope=fusion_tanh_slope)
      for s, w, lam in zip(sources, fusion_weights, fusion_l2_lambdas):
        branches[s] = (TextBranch(hidden, act, **text_kw) if s in text_sources else
                       DenseBranch(emb_dim[s], hidden, act, **kw))
        weights[s], lambdas[s] = float(w), float(lam)
    else:
      if isinstance(emb_dim, dict):
        raise ValueError(f"config field model.variant={variant!r} takes one label-embedding "
                         f"source, but data.embedding lists {sorted(emb_dim)}; use "
                         "model.variant='fusion' for several")
      if variant == "text":
        act = Activation(text_activation, "model.text_activation")
        branches["semantic"] = TextBranch(hidden, act, **text_kw)
      elif hidden > 0:
        branches["semantic"] = DenseBranch(emb_dim, hidden, Activation("relu", ""), **kw)
      weights["semantic"], lambdas["semantic"] = 1.0, float(l2_lambda)
    self.branches = nnx.Dict(branches)
    self.weights, self.lambdas = weights, lambdas
    self.in_dim = emb_dim if hidden == 0 else hidden
    self.l2_lambda = float(l2_lambda)
    self.output = _dense(self.in_dim, feature_dim, **kw)

  @staticmethod
  def _check_fusion(sources, emb_dim, weights, lambdas, text_sources) -> None:
    if len(sources) < 2 or len(set(sources)) != len(sources):
      raise ValueError(f"config field model.fusion_sources={sources}: expected two or more "
                       "distinct source names")
    if not isinstance(emb_dim, dict):
      raise ValueError(f"config field model.variant='fusion' needs the sources {sources} in "
                       "data.embedding (comma-separated); it lists only one")
    missing = [s for s in sources if s not in emb_dim]
    extra = [s for s in emb_dim if s not in sources]
    if missing or extra:
      raise ValueError(f"config field model.fusion_sources={sources} must name exactly the "
                       f"sources of data.embedding {sorted(emb_dim)} (missing {missing}, "
                       f"extra {extra})")
    for field, values in (("fusion_weights", weights), ("fusion_l2_lambdas", lambdas)):
      if len(values) != len(sources):
        raise ValueError(f"config field model.{field}={tuple(values)}: expected one value "
                         f"per model.fusion_sources {sources}")
    stray = [s for s in text_sources if s not in sources]
    if stray:
      raise ValueError(f"config field model.text_sources={tuple(text_sources)}: {stray} "
                       f"not in model.fusion_sources {sources}")

  # ----------------------------------------------------------------- pieces

  def pool_features(self, feats: jax.Array) -> jax.Array:
    """feats: [B, R, C] -> pooled visual feature [B, C] (compute dtype)."""
    if feats.ndim != 3 or feats.shape[-1] != self.feature_dim:
      raise ValueError(f"features: expected [batch, regions, {self.feature_dim}], "
                       f"got {tuple(feats.shape)}")
    feats = feats.astype(self.dtype)
    return feats.mean(axis=1) if self.pool == "mean" else feats.max(axis=1)

  def semantic(self, label_emb) -> jax.Array:
    """label_emb: [L, E] (token ids [L, T] for 'text'), or {source: [L, E_s]} for 'fusion'
    -> the input of the output layer [L, hidden] (the embeddings themselves when hidden=0)."""
    if self.variant == "fusion":
      if not isinstance(label_emb, dict):
        raise ValueError("model.variant='fusion' expects label inputs as a dict source -> "
                         f"[labels, dim] (data.embedding with {list(self.branches)})")
      missing = [s for s in self.branches if s not in label_emb]
      if missing:
        raise ValueError(f"label inputs lack the fusion source(s) {missing} of "
                         f"model.fusion_sources; got {sorted(label_emb)}")
      inputs = label_emb
    else:
      if isinstance(label_emb, dict):
        raise ValueError(f"model.variant={self.variant!r} expects one label-input array, "
                         f"got a dict of {sorted(label_emb)}")
      if not self.branches:  # hidden = 0: the output layer reads the embeddings directly
        if label_emb.ndim != 2 or label_emb.shape[-1] != self.in_dim:
          raise ValueError(f"label embeddings: expected [labels, {self.in_dim}], "
                           f"got {tuple(label_emb.shape)}")
        return jnp.asarray(label_emb).astype(self.dtype)
      inputs = {"semantic": label_emb}
    parts = [self.weights[s] * branch(inputs[s], s) for s, branch in self.branches.items()]
    return sum(parts[1:], parts[0])

  def prototypes(self, label_emb) -> jax.Array:
    """Embedded class prototypes in the visual space [L, feature_dim]."""
    return jax.nn.relu(self.output(self.semantic(label_emb)))

  def regularizer(self) -> jax.Array:
    """Σ_branch λ_branch · Σ ½||θ||² + l2_lambda · (½||W||² + ½||b||²) of the output layer."""
    total = self.l2_lambda * half_sq_norm(self.output)
    for s, branch in self.branches.items():
      total = total + self.lambdas[s] * half_sq_norm(branch)
    return total

  def __call__(self, feats: jax.Array, label_emb, scene: jax.Array | None = None, *,
               train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """feats [B, R, C] -> {'scores' [B, L], 'sq_dist' [B, L], 'prototypes' [L, C],
    'visual' [B, C], 'regularizer' []}. Distances and scores are float32."""
    del scene, train, rngs  # DEM has no scene input, dropout or batch statistics
    visual = self.pool_features(feats)
    protos = self.prototypes(label_emb)
    v, p = visual.astype(jnp.float32), protos.astype(jnp.float32)
    sq_v = jnp.sum(v * v, axis=-1)
    sq_p = jnp.sum(p * p, axis=-1)
    dot = v @ p.T
    sq_dist = jnp.maximum(sq_v[:, None] - 2.0 * dot + sq_p[None, :], 0.0)
    if self.metric == "euclidean":
      scores = -sq_dist
    else:
      eps = 1e-12
      scores = dot / (jnp.maximum(jnp.sqrt(sq_v), eps)[:, None] *
                      jnp.maximum(jnp.sqrt(sq_p), eps)[None, :])
    return {"scores": scores, "sq_dist": sq_dist, "prototypes": protos, "visual": visual,
            "regularizer": self.regularizer()}


# ------------------------------------------------------------------- loss, diagnostics

def dem_embedding_loss(sq_dist: jax.Array, states: jax.Array, visual_dim: int) -> jax.Array:
  """The official ``reduce_mean(square(v_{y_i} - φ(I_i)))`` over positive pairs.

  Sum over positive (image, label) pairs of ``||φ(I_i) - v_j||²``, divided by
  (number of positive pairs · visual_dim): the mean over every element of the
  [pairs, visual_dim] difference. Negative (-1) and unknown (0) states are ignored; an image
  without positives contributes nothing; a batch without positives gives 0.

  Args:
    sq_dist: [batch, labels] squared Euclidean distances.
    states: [batch, labels] int, values in {1, -1, 0}.
    visual_dim: the width of the visual space.
  Returns:
    scalar float32.
  """
  pos = (states > 0).astype(jnp.float32)
  total = jnp.sum(pos * sq_dist.astype(jnp.float32))
  return total / (jnp.maximum(jnp.sum(pos), 1.0) * visual_dim)


@losses.register_loss("dem_embedding")
def _dem_embedding(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  loss = dem_embedding_loss(outputs["sq_dist"], states, outputs["visual"].shape[-1])
  return loss, {"embedding_loss": loss}


# ------------------------------------------------------------------- config, builder

def model_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.model`` for DEM (AwA1/AwA2 GBU values of the official code)."""
  c = ml_collections.ConfigDict()
  c.name = "dem"
  c.variant = "single"  # 'single' | 'fusion' | 'text'
  # First-layer width: 1600 AwA1/AwA2/SUN/aPY GBU, 1200 CUB GBU, 300 old AwA attributes,
  # 900 (branch width) AwA fusion; 0 = no hidden layer ('single' only, AwA_wordvector.py).
  c.hidden = 1600
  c.visual_dim = 0  # 0 = feature_dim of the data (DEM regresses onto the image features)
  c.pool = "mean"  # regions -> one visual feature: 'mean' | 'max' (R = 1: identity)
  c.metric = "euclidean"  # 1-NN metric of the scores: 'euclidean' | 'cosine' (CUB1_GBU.py)
  # Weight decay λ·Σ½||θ||² (weights and biases) of the first layer ('single'/'text',
  # text encoder included) and of the shared output layer: 1e-3 AwA GBU, 1e-2 CUB / old AwA,
  # 1e-4 aPY, 1e-5 SUN; 1e-2 for the centre layer of AwA_fusion.py.
  c.l2_lambda = 1e-3
  c.init_stddev = OFFICIAL_INIT_STDDEV  # kernels: truncated normal (±2 stddev)
  c.init_bias = OFFICIAL_INIT_BIAS  # biases: constant
  # fusion (AwA_fusion.py: attributes 85 -> 900 tanh, words 1000 -> 900 tanh, word + 3·att)
  c.fusion_sources = ("attributes", "sentence")  # = the sources of data.embedding
  c.fusion_weights = (3.0, 1.0)  # per source, in fusion_sources order
  c.fusion_activation = "tanh"  # 'tanh' (official code) | 'scaled_tanh' | 'relu'
  c.fusion_tanh_scale = LECUN_TANH_SCALE  # scaled_tanh: scale · tanh(slope · x) (LeCun 98)
  c.fusion_tanh_slope = LECUN_TANH_SLOPE
  c.fusion_l2_lambdas = (1e-2, 1e-3)  # per source branch (official: att 1e-2, word 1e-3)
  c.text_sources = ()  # fusion sources that are token-id sequences (BiLSTM branch)
  # text encoder ('text' variant and text_sources); not in the official repo
  c.vocab_size = 0  # token ids in [0, vocab_size), 0 = padding; must be set for text
  c.token_dim = 300
  c.lstm_dim = 512
  c.text_activation = "relu"  # 'text' variant: 'relu' (paper, single); fused branches use
  # fusion_activation
  return c


def loss_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.loss`` for DEM (the regression loss; no weights of its own)."""
  c = ml_collections.ConfigDict()
  c.name = "dem_embedding"
  return c


@register_model("dem")
def build_dem(cfg, *, feature_dim: int, emb_dim: int | dict[str, int],
              grid_shape: tuple[int, int], scene_dim: int, dtype, rngs: nnx.Rngs) -> DEM:
  """Builds DEM from ``config.model`` (fields of ``model_config()``)."""
  del grid_shape, scene_dim  # DEM pools the regions and uses no scene feature
  return DEM(feature_dim=feature_dim, emb_dim=emb_dim, variant=cfg.variant,
             hidden=cfg.hidden, visual_dim=cfg.visual_dim, pool=cfg.pool, metric=cfg.metric,
             l2_lambda=cfg.l2_lambda, init_stddev=cfg.init_stddev, init_bias=cfg.init_bias,
             fusion_sources=tuple(cfg.fusion_sources),
             fusion_weights=tuple(cfg.fusion_weights),
             fusion_activation=cfg.fusion_activation,
             fusion_tanh_scale=cfg.fusion_tanh_scale,
             fusion_tanh_slope=cfg.fusion_tanh_slope,
             fusion_l2_lambdas=tuple(cfg.fusion_l2_lambdas),
             text_sources=tuple(cfg.text_sources), vocab_size=cfg.vocab_size,
             token_dim=cfg.token_dim, lstm_dim=cfg.lstm_dim,
             text_activation=cfg.text_activation, dtype=dtype, rngs=rngs)
