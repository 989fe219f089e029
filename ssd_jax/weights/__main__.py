"""`python -m ssd_jax.weights`: see `ssd_jax.weights.cli`."""

from ssd_jax.weights.cli import main

if __name__ == "__main__":
  main()
