"""Extract a folder of images into region features (official BiAM h5 layout) + a global one.

Batched on the accelerator (data-parallel over the local devices), sharded across processes,
resumable after a crash, unreadable images skipped and listed.

Plan (a pure function of the sorted image list and ``shard_size``, the same on every host):
  images = list_images(image_dir)              sorted relative paths, recursive
  shard k = images[k * shard_size : (k + 1) * shard_size],  k = 0 .. num_shards - 1
  process p of n handles the shards k with k % n == p.

Output, in ``out_dir``:
  features-KKKKK-of-NNNNN.h5   one per shard, written as ``<name>.tmp`` then renamed
                               (atomic), so a crash loses at most the shard in progress.
      <key>-features  float32 [C, R]   VGG19: C = 512 channels x R = 196 regions (row-major
                                       14x14), the official layout (BiAM
                                       ``extract_nus_wide.py``); ResNet-101: [2048, 49];
                                       CLIP ViT-B/16: float16 [512, 196] patch tokens
      <key>-scene     float32 [4096]   VGG19: fc7 after ReLU (see vgg19.py); CLIP: the
                                       class embedding [D]
      <key>-pooled    float32 [2048]   ResNet-101 instead: layer4 averaged over the regions
      attrs: image_paths / image_keys (extracted, in order), unreadable_paths /
             unreadable_reasons, shard_index, num_shards, shard_size, shard_paths (every
             image of the shard), image_size, grid_shape, architecture, preprocessing,
             format_version
    <key> = the image's relative path with '/' -> '_' (the official key; ``image_key``).
  unreadable.txt               "<relative path>\\t<reason>" for every image that could not be
                               decoded, over all finished shards (rebuilt at the end of a run).

Resume: a shard whose final file exists is skipped (its image list is checked against the
plan: a changed folder is an error, not a silent mix). Unreadable images (any exception while
opening / decoding / converting) are skipped and recorded in their shard, so a rerun does not
retry them.

Entry points: ``extract_folder`` (library), ``main`` (``python -m mlzsl_jax.extract.run``),
``iter_features`` (read the results back).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import itertools
import os
import re
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

FORMAT_VERSION = 1
SHARD_GLOB = "features-*-of-*.h5"
SHARD_RE = re.compile(r"features-(\d{5})-of-(\d{5})\.h5$")
UNREADABLE_FILE = "unreadable.txt"
GLOBAL_OUTPUTS = ("scene", "pooled")  # the per-image vector each backbone adds


def shard_name(index: int, count: int) -> str:
  return f"features-{index:05d}-of-{count:05d}.h5"


def shard_bounds(num_images: int, shard_size: int) -> list[tuple[int, int]]:
  """[(start, stop)] of each shard over the sorted image list."""
  return [(s, min(s + shard_size, num_images)) for s in range(0, num_images, shard_size)]


def process_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
  """Shards of process ``process_index`` of ``process_count``: k % count == index."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} / process_count={process_count}: "
                     "expected 0 <= index < count")
  return list(range(process_index, num_shards, process_count))


@dataclasses.dataclass
class ExtractSummary:
  """What one ``extract_folder`` call did (this process only)."""

  num_images: int            # images assigned to this process
  extracted: int             # images whose features this call wrote
  already_done: int          # images in shards finished by an earlier run
  unreadable: list[tuple[str, str]]  # (relative path, reason) found by this call
  shard_paths: list[str]     # every shard file of this process (finished now or before)
  seconds: float             # wall time of the call
  loop_seconds: float        # decode + forward + write (incl. the one compilation)

  @property
  def images_per_second(self) -> float:
    """Images decoded and extracted (or found unreadable) per second of the loop."""
    done = self.extracted + len(self.unreadable)
    return done / self.loop_seconds if self.loop_seconds > 0 else float("nan")


def _decode_ahead(items: Sequence[tuple[int, str]], root: str, size, workers: int,
                  window: int, load_image: Callable[[str, tuple[int, int]], np.ndarray]
                  ) -> Iterator[tuple[int, str, np.ndarray | None, str]]:
  """(shard, rel) -> (shard, rel, image [H, W, 3] or None, reason), in input order, with at
  most ``window`` images being decoded ahead by ``workers`` threads (``load_image``: the
  backbone's decoder and preprocessing)."""

  def load(rel):
    try:
      return load_image(os.path.join(root, rel), size), ""
    except Exception as e:  # any decoder failure: the image is skipped and listed
      return None, f"{type(e).__name__}: {e}".replace("\n", " ").replace("\t", " ")

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    queue = collections.deque()
    it = iter(items)
    for shard, rel in itertools.islice(it, window):
      queue.append((shard, rel, pool.submit(load, rel)))
    while queue:
      shard, rel, future = queue.popleft()
      nxt = next(it, None)
      if nxt is not None:
        queue.append((nxt[0], nxt[1], pool.submit(load, nxt[1])))
      image, reason = future.result()
      yield shard, rel, image, reason


def make_forward(model, batch_size: int, devices: Sequence[Any] | None = None,
                 precision: str | None = None) -> Callable[[np.ndarray], tuple]:
  """A jitted ``images [batch, H, W, 3] -> {"features": [batch, C, R], name: [batch, D]}``
  (float32 jax arrays; name = the backbone's global output, "scene" or "pooled"),
  data-parallel over ``devices`` (default: this process's local devices; ``batch_size``
  must be a multiple of their number)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  devices = list(jax.local_devices() if devices is None else devices)
  if batch_size < 1 or batch_size % len(devices):
    raise ValueError(f"batch_size={batch_size}: expected a positive multiple of the "
                     f"{len(devices)} local device(s)")
  mesh = Mesh(np.array(devices), ("data",))
  replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, replicated)

  @jax.jit
  def forward(state, images):
    out = nnx.merge(graphdef, state)(images)
    regions = out.pop("regions")
    return {"features": jnp.swapaxes(regions, 1, 2).astype(jnp.float32),
            **{k: v.astype(jnp.float32) for k, v in out.items()}}

  def run(images: np.ndarray):
    x = jax.device_put(images, batched)
    if precision:
      with jax.default_matmul_precision(precision):
        return forward(state, x)
    return forward(state, x)
  return run


def _str_array(values: Sequence[str]):
  import h5py  # pylint: disable=import-outside-toplevel
  return np.array(list(values), dtype=h5py.string_dtype())


def _read_str_attr(attrs, name: str) -> list[str]:
  value = attrs.get(name, [])
  return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel()]


class _ShardWriter:
  """Writes one shard to ``<path>.tmp``; ``commit`` closes and renames it into place."""

  def __init__(self, path: str, attrs: Mapping[str, Any], compression: str | None,
               store_dtype=np.float32):
    import h5py  # pylint: disable=import-outside-toplevel
    self.path, self.tmp = path, path + ".tmp"
    self.file = h5py.File(self.tmp, "w")
    self.attrs, self.compression = dict(attrs), compression
    self.store_dtype = store_dtype
    self.paths: list[str] = []
    self.unreadable: list[tuple[str, str]] = []

  def add(self, rel: str, outputs: Mapping[str, np.ndarray]):
    """outputs: "features" [C, R] and the global feature ("scene" / "pooled") of one image."""
    from mlzsl_jax.extract.images import image_key  # pylint: disable=import-outside-toplevel
    key = image_key(rel)
    for name, value in outputs.items():
      dtype = self.store_dtype if name == "features" else np.float32
      self.file.create_dataset(f"{key}-{name}", data=value, dtype=dtype,
                               compression=self.compression)
    self.paths.append(rel)

  def commit(self):
    from mlzsl_jax.extract.images import image_key  # pylint: disable=import-outside-toplevel
    attrs = self.file.attrs
    for name, value in self.attrs.items():
      attrs[name] = _str_array(value) if name == "shard_paths" else value
    attrs["image_paths"] = _str_array(self.paths)
    attrs["image_keys"] = _str_array([image_key(p) for p in self.paths])
    attrs["unreadable_paths"] = _str_array([p for p, _ in self.unreadable])
    attrs["unreadable_reasons"] = _str_array([r for _, r in self.unreadable])
    self.file.close()
    os.replace(self.tmp, self.path)

  def abort(self):
    try:
      self.file.close()
    finally:
      if os.path.exists(self.tmp):
        os.remove(self.tmp)


def _check_finished_shard(path: str, expected_paths: Sequence[str],
                          settings: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]]]:
  """(images extracted, unreadable list) of a finished shard, after checking it matches
  the current plan and settings; ValueError naming the file otherwise."""
  import h5py  # pylint: disable=import-outside-toplevel
  try:
    with h5py.File(path, "r") as f:
      shard_paths = _read_str_attr(f.attrs, "shard_paths")
      got = {k: f.attrs.get(k) for k in settings}
      extracted = len(_read_str_attr(f.attrs, "image_paths"))
      unreadable = list(zip(_read_str_attr(f.attrs, "unreadable_paths"),
                            _read_str_attr(f.attrs, "unreadable_reasons")))
  except OSError as e:
    raise ValueError(f"finished shard {path!r} cannot be read ({e}); delete it to "
                     "re-extract its images") from e
  if shard_paths != list(expected_paths):
    raise ValueError(f"finished shard {path!r} holds a different image list than the "
                     "folder now gives for it (images added/removed since?); extract into "
                     "a new out_dir")
  for name, want in settings.items():
    value = got[name]
    value = value.tolist() if isinstance(value, np.ndarray) else value
    want = list(want) if isinstance(want, tuple) else want
    if value != want:
      raise ValueError(f"finished shard {path!r}: attribute {name!r} is {value!r}, this run "
                       f"uses {want!r}; extract into a new out_dir")
  return extracted, unreadable


def write_unreadable_list(out_dir: str) -> str:
  """Rebuilds ``out_dir/unreadable.txt`` from every finished shard (atomic); returns path."""
  import h5py  # pylint: disable=import-outside-toplevel
  rows = []
  for path in sorted(glob.glob(os.path.join(out_dir, SHARD_GLOB))):
    with h5py.File(path, "r") as f:
      rows += zip(_read_str_attr(f.attrs, "unreadable_paths"),
                  _read_str_attr(f.attrs, "unreadable_reasons"))
  out = os.path.join(out_dir, UNREADABLE_FILE)
  tmp = f"{out}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(f"{p}\t{r}\n" for p, r in sorted(rows))
  os.replace(tmp, out)
  return out


def iter_features(out_dir: str) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  """(key, {"regions": float32 [R, C] (the stored [C, R] transposed), "scene" [4096] or
  "pooled" [2048]}) of every extracted image, in shard then image order (= sorted paths)."""
  import h5py  # pylint: disable=import-outside-toplevel
  for path in sorted(glob.glob(os.path.join(out_dir, SHARD_GLOB))):
    with h5py.File(path, "r") as f:
      for key in _read_str_attr(f.attrs, "image_keys"):
        out = {}
        for name in GLOBAL_OUTPUTS:
          if f"{key}-{name}" in f:
            out[name] = np.asarray(f[f"{key}-{name}"])
        yield key, {"regions": np.asarray(f[key + "-features"], np.float32).T, **out}


def _extract_shard(group: Iterator[tuple[int, str, np.ndarray | None, str]],
                   writer: "_ShardWriter", forward, batch_size: int, size: tuple[int, int],
                   bar) -> int:
  """Runs one shard's decoded images through ``forward`` in batches (the last one
  zero-padded) into ``writer``; unreadable ones go to ``writer.unreadable``. The next batch
  is dispatched before the previous one's results are copied back and written. Returns the
  number of images written."""
  written, pending = 0, None  # pending: (paths, device outputs) of the batch in flight

  def flush(item) -> int:
    paths, outputs = item
    outputs = {k: np.asarray(v) for k, v in outputs.items()}
    for i, rel in enumerate(paths):
      writer.add(rel, {k: v[i] for k, v in outputs.items()})
    bar.update(len(paths))
    return len(paths)

  # a fresh buffer per batch: device_put may alias host memory on CPU backends
  paths, batch = [], np.zeros((batch_size, *size, 3), np.float32)
  for _, rel, image, reason in itertools.chain(group, [(None, None, None, "")]):
    if rel is not None and image is None:
      writer.unreadable.append((rel, reason))
      bar.update(1)
      continue
    if rel is not None:
      batch[len(paths)] = image
      paths.append(rel)
    if paths and (len(paths) == batch_size or rel is None):
      launched = (paths, forward(batch))
      paths, batch = [], np.zeros_like(batch)
      if pending is not None:
        written += flush(pending)
      pending = launched
  if pending is not None:
    written += flush(pending)
  return written


def load_backbone(backbone: str, weights, dtype: str = "float32"):
  """The registered ``backbone`` (``mlzsl_jax.extract.backbones``: vgg19, resnet101,
  clip_vit_*) holding ``weights``: a weight file or folder, a numpy state dict (torchvision
  backbones), or the module itself."""
  from mlzsl_jax.extract import backbones  # pylint: disable=import-outside-toplevel
  return backbones.get(backbone).load(weights, dtype)


def extract_folder(image_dir: str, out_dir: str, weights, *, backbone: str = "vgg19",
                   batch_size: int = 64,
                   shard_size: int = 1024, dtype: str = "float32",
                   precision: str | None = None, num_workers: int = 8,
                   compression: str | None = None, process_index: int | None = None,
                   process_count: int | None = None, devices: Sequence[Any] | None = None,
                   progress: bool = True,
                   on_shard_written: Callable[[int, str], None] | None = None
                   ) -> ExtractSummary:
  """Extract every image below ``image_dir`` into shards in ``out_dir`` (module docstring).

  Args:
    weights: torchvision state dict file of the backbone (.pth via
      torch.load(weights_only=True), or .npz), a numpy state dict, or the module (tests).
    backbone: "vgg19" (regions [512, 196] + scene [4096], BiAM), "resnet101" (regions
      [2048, 49] + pooled [2048]) or a CLIP ViT ("clip_vit_b16": float16 patch tokens
      [512, 196] + the class embedding [512] as scene; ``mlzsl_jax.backbones.clip_extract``).
    batch_size: images per accelerator call (multiple of the local device count); the
      last batch of a shard is zero-padded, so one compiled shape serves all.
    shard_size: images per output file; a crash loses at most one shard per process.
    dtype: compute dtype ("float32", or "bfloat16" for speed); outputs are float32.
    precision: jax matmul/conv precision ("highest" for full float32 on GPUs that would
      otherwise use TF32), None = JAX's default.
    num_workers: threads decoding images ahead of the accelerator.
    compression: h5py compression of each dataset (None, "gzip", "lzf"); the official
      files use gzip (smaller, slower to write).
    process_index / process_count: this process's share (default: jax.process_index() /
      jax.process_count()); tests simulate several hosts with them.
    devices: local devices to use (default: all of this process's).
    on_shard_written: called as (shard index, path) after each shard is committed.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  from mlzsl_jax.extract.images import list_images  # pylint: disable=import-outside-toplevel

  for field, value in (("batch_size", batch_size), ("shard_size", shard_size),
                       ("num_workers", num_workers)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{field}: expected a positive int, got {value!r}")
  if dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {dtype!r}")
  simulated = process_index is not None or process_count is not None
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count

  start_time = time.perf_counter()
  images = list_images(image_dir)
  if not images:
    raise ValueError(f"image folder {image_dir!r}: no image files found")
  bounds = shard_bounds(len(images), shard_size)
  mine = process_shards(len(bounds), process_index, process_count)
  os.makedirs(out_dir, exist_ok=True)
  stale = [p for p in glob.glob(os.path.join(out_dir, SHARD_GLOB))
           if (m := SHARD_RE.search(p)) and int(m.group(2)) != len(bounds)]
  if stale:
    raise ValueError(f"out_dir {out_dir!r} holds shards of a different plan (e.g. "
                     f"{os.path.basename(stale[0])}; this run makes {len(bounds)} shards of "
                     f"{shard_size}); use a new out_dir or the same shard_size and folder")

  from mlzsl_jax.extract import backbones  # pylint: disable=import-outside-toplevel
  entry = backbones.get(backbone)
  model = entry.load(weights, dtype)
  settings = {"format_version": FORMAT_VERSION, "architecture": entry.architecture(model),
              "shard_size": shard_size, "num_shards": len(bounds),
              "image_size": tuple(model.image_size), "grid_shape": tuple(model.grid_shape),
              "preprocessing": entry.preprocessing}

  todo, done_images, shard_paths = [], 0, []
  for k in mine:
    path = os.path.join(out_dir, shard_name(k, len(bounds)))
    shard_paths.append(path)
    expected = images[slice(*bounds[k])]
    if os.path.exists(path):
      _check_finished_shard(path, expected, settings)
      done_images += len(expected)
    else:
      if os.path.exists(path + ".tmp"):
        os.remove(path + ".tmp")  # left by a crash; only this process owns shard k
      todo.extend((k, rel) for rel in expected)

  forward = make_forward(model, batch_size, devices, precision)
  height, width = model.image_size
  unreadable: list[tuple[str, str]] = []
  extracted = 0
  bar = tqdm(total=done_images + len(todo), initial=done_images, unit="img",
             desc=f"extract p{process_index}/{process_count}", disable=not progress,
             dynamic_ncols=True)
  loop_start = time.perf_counter()
  stream = _decode_ahead(todo, os.fspath(image_dir), (height, width), num_workers,
                         window=2 * batch_size + num_workers, load_image=entry.load_image)
  try:
    for k, group in itertools.groupby(stream, key=lambda item: item[0]):
      path = os.path.join(out_dir, shard_name(k, len(bounds)))
      writer = _ShardWriter(path, {**settings, "shard_index": k,
                                   "shard_paths": images[slice(*bounds[k])]}, compression,
                           store_dtype=entry.store_dtype)
      try:
        extracted += _extract_shard(group, writer, forward, batch_size, (height, width), bar)
        writer.commit()
      except BaseException:
        writer.abort()
        raise
      unreadable += writer.unreadable
      if on_shard_written is not None:
        on_shard_written(k, path)
  finally:
    bar.close()
  loop_seconds = time.perf_counter() - loop_start

  if process_count > 1 and not simulated:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("mlzsl_jax.extract: all shards written")
  write_unreadable_list(out_dir)
  return ExtractSummary(num_images=done_images + len(todo), extracted=extracted,
                        already_done=done_images, unreadable=unreadable,
                        shard_paths=shard_paths, seconds=time.perf_counter() - start_time,
                        loop_seconds=loop_seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The extract command's flags (mirrored by ``python -m mlzsl_jax.main extract``)."""
  parser.add_argument("--image_dir", required=True, help="folder of images (recursive)")
  parser.add_argument("--out_dir", required=True, help="where the h5 shards go")
  from mlzsl_jax.extract import backbones  # pylint: disable=import-outside-toplevel
  parser.add_argument("--backbone", default="vgg19", choices=backbones.names())
  parser.add_argument("--weights", "--vgg19_weights", dest="weights", required=True,
                      help="the backbone's weights: torchvision state dict for vgg19 / "
                      "resnet101 (.pth: needs torch; or .npz of the same keys); CLIP: an "
                      "OpenAI / open_clip .safetensors or .pt, or a Hugging Face folder")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--shard_size", type=int, default=1024)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  parser.add_argument("--precision", default=None, choices=("default", "high", "highest"))
  parser.add_argument("--num_workers", type=int, default=8)
  parser.add_argument("--compression", default=None, choices=("gzip", "lzf"))


def main(argv: Sequence[str] | None = None) -> ExtractSummary:
  """``python -m mlzsl_jax.extract.run --image_dir D --out_dir O --vgg19_weights F``."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_arguments(parser)
  args = parser.parse_args(argv)
  summary = extract_folder(args.image_dir, args.out_dir, args.weights, backbone=args.backbone,
                           batch_size=args.batch_size, shard_size=args.shard_size,
                           dtype=args.dtype, precision=args.precision,
                           num_workers=args.num_workers, compression=args.compression)
  listed = os.path.join(args.out_dir, UNREADABLE_FILE)
  with open(listed, encoding="utf-8") as f:
    total_unreadable = sum(1 for _ in f)
  print(f"extracted {summary.extracted} image(s) ({summary.images_per_second:.1f} img/s), "
        f"{summary.already_done} done by an earlier run; {total_unreadable} unreadable in "
        f"all (listed in {listed})", flush=True)
  return summary


if __name__ == "__main__":
  main()
