"""Test set-up: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests build many Trainers that compile the same functions (every resume, every phase of a
# chain, every test of one model): a compilation cache for this session turns the repeats
# into cache reads. Fresh per run, so nothing compiled by other code is ever reused. Set on
# this process's jax.config only, NOT through the environment: subprocesses started by tests
# (the CLI's kill / profile runs) must compile for themselves (a subprocess that loaded an
# executable cached by this process and then started the profiler crashed, in CI).
import tempfile  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="mlzsl_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
