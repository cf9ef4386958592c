"""Every registered model trains and evaluates on digits_mosaic through the common trainer
(`train.train_and_evaluate`, what the CLI calls), from its `configs/<model>_digits.py` smoke
variant: no model-specific code in train.py / evaluate.py."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mlzsl_jax import train
from mlzsl_jax.models import registered_models

ROOT = Path(__file__).resolve().parents[1]


def load_config(path: Path, arg: str):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


# Scores CLIP features with CLIP text: nothing to run on the digits' pixel regions (tested
# on CLIP tokens in tests/test_clip_extract.py, with every model beside it).
CLIP_ONLY = ("clip_zero_shot",)


def test_every_registered_model_has_a_digits_config():
  missing = [m for m in registered_models()
             if m not in CLIP_ONLY and not (ROOT / "configs" / f"{m}_digits.py").exists()]
  assert not missing


CASES = [(m, "smoke=True") for m in ("biam", "lesa", "attention_per_label", "fast0tag", "conse",
                                     "labelem", "dem")]
CASES += [("dem", f"smoke=True,single_label=True,variant={v}") for v in ("fusion", "text")]


@pytest.mark.parametrize("model,arg", CASES)
def test_trains_and_evaluates(model, arg, data_dir, tmp_path):
  config = load_config(ROOT / "configs" / f"{model}_digits.py", arg)
  config.unlock()
  config.data.data_dir = data_dir
  config.lock()
  assert config.model.name == model
  result = train.train_and_evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["zsl"] == pytest.approx(result["zsl"])
  headline = "top1" if config.eval.protocol == "single_label" else "map"
  assert 0.0 <= result["zsl"][headline] <= 1.0
  assert np.isfinite(list(result["gzsl"].values())).all()
  assert result["num_images"] == config.data.num_test
