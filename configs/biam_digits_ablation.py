"""BiAM ablations on the demo data, in the shape of the BiAM paper's ablation tables.

``data=colours`` (colour_digits, the demo): context_* as below; pool_top3 / pool_mean: the
image score = the mean of the top 3 region scores or of all 9, against the default top-1 (an
object is one region). Every run also scores the test scenes where binding is needed
(``report --split test_binding``). ``data=mosaic`` (default, digits_mosaic):

Base: configs/biam_digits.py (the demo: same data, split, epochs, seed). Sweep points:
  context_both / context_region / context_scene / context_none: the module ablation (BiAM;
      region context block only; scene context block only; neither, i.e. the stem's region
      features go straight to the fusion conv);
  pool_max / pool_mean: image score = the max region score (top-1) or the mean over all 36
      regions, against the default mean of the top 4 (a digit covers 2x2 regions);
  emb_seven_segment / emb_strokes / emb_attributes_centred: the label embedding (the
      default is 'attributes' = seven segments + stroke facts; see data/attributes.py).
The reference point is context_both (= the demo).

  python -m mlzsl_jax.main sweep --config configs/biam_digits_ablation.py \\
      --workdir workdirs/biam_ablation
  python -m mlzsl_jax.main report workdirs/biam_ablation
  --config configs/biam_digits_ablation.py:sweep=context   one group only (context, pooling,
      embedding); :smoke=True for tests
  --config configs/biam_digits_ablation.py:seeds=3483/1/2   every point for each seed (the
      first seed keeps the plain point names, so a finished single-seed sweep is reused);
      then `report --aggregate` gives mean ± std per point
"""

import os

from mlzsl_jax.config_base import parse_arg
from mlzsl_jax.sweep import load_config_module


def _args(arg: str | None):
  return parse_arg(arg, smoke=False, sweep="all", seeds="", data="mosaic")


def get_config(arg: str | None = None):
  """The demo's config (configs/biam_digits.py), the base of every point."""
  args = _args(arg)
  demo, _ = load_config_module(os.path.join(os.path.dirname(__file__), "biam_digits.py"))
  return demo.get_config(f"smoke={args.smoke},data={args.data}")


COLOUR_GROUPS = {
    "context": None,  # the same points as on the mosaic (GROUPS["context"])
    "pooling": {
        "pool_top3": {"model.top_k": 3},
        "pool_mean": {"model.top_k": 9},
    },
}

GROUPS = {
    "context": {
        "context_both": {"model.context": "both"},
        "context_region": {"model.context": "region"},
        "context_scene": {"model.context": "scene"},
        "context_none": {"model.context": "none"},
    },
    "pooling": {
        "pool_max": {"model.top_k": 1},
        "pool_mean": {"model.top_k": 36},
    },
    "embedding": {
        "emb_seven_segment": {"data.embedding": "seven_segment"},
        "emb_strokes": {"data.embedding": "strokes"},
        "emb_attributes_centred": {"data.embedding": "attributes_centred"},
    },
}


def get_sweep(arg: str | None = None):
  """{point name: overrides}; ``sweep=all`` or one group of GROUPS; ``seeds=a/b/c``: each
  point once per seed (``<name>_s<seed>`` for all but the first seed)."""
  args = _args(arg)
  known = ({k: v or GROUPS[k] for k, v in COLOUR_GROUPS.items()} if args.data == "colours"
           else GROUPS)
  if args.sweep != "all" and args.sweep not in known:
    raise ValueError(f"config argument sweep={args.sweep!r}: expected 'all' or one of "
                     f"{sorted(known)}")
  groups = known if args.sweep == "all" else {args.sweep: known[args.sweep]}
  points = {name: overrides for group in groups.values() for name, overrides in group.items()}
  if not args.seeds:
    return points
  try:
    seeds = [int(x) for x in args.seeds.split("/")]
  except ValueError as e:
    raise ValueError(f"config argument seeds={args.seeds!r}: expected integers joined by "
                     "'/', e.g. seeds=3483/1/2") from e
  return {(name if i == 0 else f"{name}_s{seed}"): {**overrides, "seed": seed}
          for name, overrides in points.items() for i, seed in enumerate(seeds)}
