"""Pinning a benchmark to N cores, for XLA's and torch's thread pools alike."""

import os


def pin_threads(threads: int) -> int:
  """Restricts this process (and the threads it starts later) to ``threads`` cores, so that
  XLA's and torch's thread pools both see the same cores; returns the thread count."""
  import torch  # pylint: disable=import-outside-toplevel
  cores = sorted(os.sched_getaffinity(0))
  if threads <= 0:
    threads = len(cores)
  if threads > len(cores):
    raise ValueError(f"--threads={threads}: only {len(cores)} cores are available")
  if threads < len(cores):
    os.sched_setaffinity(0, cores[:threads])
  torch.set_num_threads(threads)
  return threads
