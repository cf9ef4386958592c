"""Compile a config's programs for an accelerator topology this machine does not have.

``python -m mlzsl_jax.main compile --config CFG --topology v5e:16x16`` (``command.py``):
the train step, the evaluation forward and the on-device metrics, lowered on abstract arrays
placed on a TPU slice's or GPUs' compile-only devices (``topology.py``: libtpu, or JAX's CUDA
plugin with a card description) and compiled by XLA's TPU or GPU compiler; XLA's memory
and cost analyses of each program against the chip's published figures (``chips.py``), its
collectives and heaviest ops from the compiled HLO (``hlo.py``), and a roofline estimate
(``report.py``).
"""
