"""ssd_jax: SSD, the Single Shot MultiBox Detector (Liu et al., 2016), in JAX.

Importing the package has no side effects; import the submodules you need:
`ssd_jax.boxes`, `ssd_jax.default_boxes`, `ssd_jax.matching`, `ssd_jax.losses`,
`ssd_jax.postprocess`, `ssd_jax.evaluation`.
"""

__version__ = "0.1.0"
