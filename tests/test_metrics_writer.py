"""Tests for ssd_jax/metrics_writer.py: the progress line and metrics file."""

import math

from ssd_jax import metrics_writer


def test_progress_line_and_metrics_file(tmp_path):
  now = [0.0]
  progress = metrics_writer.Progress(100, 8, clock=lambda: now[0])
  progress.update(1)
  assert math.isnan(progress.images_per_sec())
  now[0] = 2.0
  progress.update(5)  # 4 steps x 8 images in 2 s.
  assert progress.images_per_sec() == 16.0
  assert progress.eta_seconds() == 95 * 8 / 16.0
  line = progress.line(5, {"loss": 1.5, "loc_loss": 0.5, "conf_loss": 1.0})
  assert "step 5/100" in line and "16.0 img/s" in line and "0:00:48" in line
  writer = metrics_writer.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write(1, {"loss": 2.0, "name": "x"})
  writer.close()
  assert metrics_writer.read_metrics(str(tmp_path)) == [
    {"step": 1, "loss": 2.0}
  ]
