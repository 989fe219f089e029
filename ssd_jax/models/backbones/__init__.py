"""SSD backbones: each returns its source feature maps, largest first.

A backbone is a flax module whose `__call__(images)` returns the list of
maps the SSD heads read directly (VGG16: conv4_3 after its L2Norm, and fc7);
the SSD's extra blocks continue from the last one. Next to it live the
arithmetic of its map sides (for the default boxes) and what its weight
converters need (layer names).
"""

from ssd_jax.models.backbones.vgg import VGG16, L2Norm, VGG16Backbone

__all__ = ["VGG16", "L2Norm", "VGG16Backbone"]
