"""Test-session set-up: the XLA CPU setting that the entry points use.

Applied before any test starts JAX's backends, so the suite runs the same
XLA CPU configuration as `python -m ssd_jax.main` (see ssd_jax/xla_cpu.py).
"""

from ssd_jax import xla_cpu

xla_cpu.apply()
