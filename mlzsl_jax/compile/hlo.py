"""What a compiled program's optimised HLO text says: collectives and the ops that move the
most bytes (with the model code they come from: the ``op_name`` metadata).

Sizes are logical (elements x dtype bytes); a TPU layout may pad small or odd dimensions.
Ops inside loops (e.g. the label-chunked scoring's ``while``) appear once, as in XLA's own
cost analysis.
"""

from __future__ import annotations

import dataclasses
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "s4": 0.5,
               "u4": 0.5, "token": 0}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
# ops that move no data of their own
FREE_OPS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
            "partition-id", "replica-id"}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def shape_bytes(shape: str) -> float:
  """Logical bytes of an HLO shape string (arrays and tuples of arrays)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype not in DTYPE_BYTES:
      continue
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += count * DTYPE_BYTES[dtype]
  return total


def short_shape(shape: str) -> str:
  """An HLO shape without its layouts: 'bf16[32,196]{1,0:T(8,128)}' -> 'bf16[32,196]'."""
  return re.sub(r"\{[^{}]*\}", "", shape)


def _split_args(tail: str) -> str:
  """The text inside the op's argument parentheses (``tail`` starts after the '(')."""
  depth = 1
  for i, ch in enumerate(tail):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return tail[:i]
  return tail


@dataclasses.dataclass(frozen=True)
class Op:
  name: str
  opcode: str
  shape: str
  operand_bytes: float
  output_bytes: float
  op_name: str  # jax's metadata: the traced function path of the model code
  computation: str
  entry: bool

  @property
  def bytes(self) -> float:
    return self.operand_bytes + self.output_bytes


def parse_ops(text: str) -> list[Op]:
  """Every instruction of every computation of an HLO module's text."""
  ops, shapes = [], {}
  computation, entry = "", False
  for line in text.splitlines():
    stripped = line.strip()
    if stripped.endswith("{") and ("(" in stripped) and "=" not in stripped.split("(")[0]:
      entry = stripped.startswith("ENTRY")
      computation = stripped.split()[1 if entry else 0].lstrip("%")
      shapes = {}
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, opcode, tail = m.groups()
    shapes[name] = shape
    args = _split_args(tail)
    operands = re.findall(r"%([\w.\-]+)", args)
    operand_bytes = sum(shape_bytes(shapes.get(o, "")) for o in operands)
    op_name = _OP_NAME.search(tail)
    ops.append(Op(name, opcode, shape, operand_bytes, shape_bytes(shape),
                  op_name.group(1) if op_name else "", computation, entry))
  return ops


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  count: int
  bytes: float  # per device: operands of all-reduce / reduce-scatter / all-to-all /
                # collective-permute, outputs of all-gather


def collectives(ops: list[Op]) -> list[Collective]:
  """Collectives of the module by kind (async ``-start`` counted, ``-done`` skipped)."""
  found: dict[str, list[float]] = {}
  for op in ops:
    kind = op.opcode.removesuffix("-start")
    if kind not in COLLECTIVES or op.opcode.endswith("-done"):
      continue
    moved = op.output_bytes if kind == "all-gather" and not op.opcode.endswith("-start") \
        else op.operand_bytes
    if kind == "all-gather" and op.opcode.endswith("-start"):
      moved = op.output_bytes - op.operand_bytes  # the start's shape is (operand, result)
    found.setdefault(kind, []).append(moved)
  return [Collective(k, len(v), float(sum(v))) for k, v in sorted(found.items())]


ASYNC_MOVES = ("copy-start", "slice-start")


def async_move_bytes(ops: list[Op]) -> float:
  """Bytes of the top-level asynchronous copies and slices (XLA TPU's moves between HBM
  and on-chip memory, and prefetches), counted as XLA's cost analysis counts them: operand
  plus the whole result tuple, which repeats the operand."""
  return sum(op.bytes for op in ops if op.entry and op.opcode in ASYNC_MOVES)


def top_ops(ops: list[Op], count: int) -> list[Op]:
  """The ``count`` top-level (entry computation) ops that move the most bytes."""
  movers = [op for op in ops if op.entry and op.opcode not in FREE_OPS
            and not op.opcode.endswith("-done")]
  return sorted(movers, key=lambda op: -op.bytes)[:count]
