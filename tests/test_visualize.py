"""Tests for ssd_jax/visualize.py: drawn boxes, plots, tables and grids."""

import numpy as np
import pytest
from PIL import Image

from ssd_jax import visualize


def test_pictures_and_table():
  # Moved from test_main.py.
  image = np.zeros((40, 60, 3), np.uint8)
  pic = visualize.draw_detections(
    image,
    np.array([[5.0, 5, 30, 30], [1, 1, 2, 2]]),
    np.array([1, 2]),
    np.array([0.9, 0.1]),
    ["cat", "dog"],
  )
  arr = np.asarray(pic)
  assert arr.shape == (40, 60, 3)
  assert (arr[29, 5:30] == visualize.class_color(1)).all()  # Bottom edge.
  assert (arr[1:3, 1:3] == 0).all()  # Below min_score: not drawn.
  plot = visualize.plot_pr_curves(
    {"cat": (np.array([0.5, 1.0]), np.array([1.0, 0.5]))}, {"cat": 0.75}, "t"
  )
  assert plot.size[1] > 0
  table = visualize.format_ap_table(7, 0.5, {"cat": 0.25, "dog": 0.75})
  assert table.splitlines()[-1].split() == ["mAP", "0.5000"]
  assert "dog" in table


def test_class_colors_cycle_and_differ():
  colors = [visualize.class_color(label) for label in range(1, 15)]
  assert len(set(colors)) == 14
  assert visualize.class_color(15) == visualize.class_color(1)
  assert all(0 <= c <= 255 for rgb in colors for c in rgb)


def test_format_ap_table_lines():
  table = visualize.format_ap_table(3, 0.125, {"aeroplane": 0.25})
  assert table.splitlines() == [
    "Evaluation at step 3",
    "class      AP",
    "aeroplane  0.2500",
    "mAP        0.1250",
  ]


def test_plot_pr_curves_draws_each_curve_in_its_colour():
  size, margin = 100, 40
  plot = visualize.plot_pr_curves(
    {"a": (np.array([1.0]), np.array([1.0])), "b": (np.zeros(0), np.zeros(0))},
    {"a": 1.0},
    "title",
    size=size,
  )
  assert plot.size == (size + 2 * margin + 170, size + 2 * margin)
  arr = np.asarray(plot)
  # Curve "a" is the line precision = 1 from recall 0 to 1: the plot's top.
  top = arr[margin, margin + 10 : margin + size - 10]
  assert (top == visualize.class_color(1)).all()
  # An empty curve draws nothing in the plot; its legend line is drawn.
  b_pixels = (arr == visualize.class_color(2)).all(-1)
  assert not b_pixels[:, : margin + size + 1].any()
  assert b_pixels[:, margin + size + 1 :].any()


def test_grid_image_places_tiles_row_major():
  tiles = [Image.new("RGB", (4, 3), color) for color in ("red", "lime", "blue")]
  tiles.append(Image.new("RGB", (2, 2), "black"))
  grid = visualize.grid_image(tiles, columns=3)
  assert grid.size == (12, 6)
  arr = np.asarray(grid)
  assert (arr[0:3, 0:4] == (255, 0, 0)).all()
  assert (arr[0:3, 4:8] == (0, 255, 0)).all()
  assert (arr[0:3, 8:12] == (0, 0, 255)).all()
  assert (arr[3:5, 0:2] == 0).all()
  assert (arr[5, 0:4] == 255).all() and (arr[3:6, 4:] == 255).all()  # White.
  with pytest.raises(ValueError, match="at least one image"):
    visualize.grid_image([])


def test_detections_grid_enlarges_small_tiles():
  small = np.zeros((32, 64, 3), np.uint8)  # Longest side 64: zoom 4.
  large = np.zeros((300, 200, 3), np.uint8)  # Already large: zoom 1.
  box = np.array([[2.0, 12.0, 30.0, 30.0]])
  grid = visualize.detections_grid(
    [
      (small, box, np.array([1]), np.array([0.9])),
      (large, box, np.array([2]), np.array([0.9])),
    ],
    ["cat", "dog"],
  )
  assert grid.size == (2 * 256, 300)  # Cells as large as the largest tile.
  arr = np.asarray(grid)
  want = visualize.draw_detections(
    np.zeros((128, 256, 3), np.uint8),
    box * 4,
    np.array([1]),
    np.array([0.9]),
    ["cat", "dog"],
  )
  np.testing.assert_array_equal(arr[:128, :256], np.asarray(want))
  # Bottom edges: the small tile's box scaled 4x, the large one's as given.
  assert (arr[119, 8:120] == visualize.class_color(1)).all()
  assert (arr[29, 256 + 2 : 256 + 30] == visualize.class_color(2)).all()
