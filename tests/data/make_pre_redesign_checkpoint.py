"""How tests/data/pre_redesign_checkpoint was made, with commit d8675ba's code.

Run from a checkout of d8675ba (the last commit before issue 11's redesign;
its `ssd_jax.train` no longer exists):

  git worktree add /tmp/old d8675ba && cd /tmp/old
  PYTHONPATH=. python /path/to/this/file.py OUT_DIR

configs/shapes.py:small shrunk to width 1/16 with SGD (a 1.3 MB checkpoint);
also writes OUT_DIR.json with per-leaf sums of the saved state, which
tests/test_train.py compares after restoring with the current code.
"""

import json
import os
import shutil
import sys

import numpy as np
from flax import traverse_util

from ssd_jax import checkpoint, train

out = sys.argv[1]
config = train.config_from_file("configs/shapes.py", "small")
config.model.width = 0.0625
config.optimizer = "sgd"
config.num_steps = 2
config.checkpoint_every = 2
config.eval_every = 0
config.keep_checkpoints = 1
config.eval.num_pictures = 0
work = "/tmp/oldckpt_work"
shutil.rmtree(work, ignore_errors=True)
train.train_and_evaluate(config, work)
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(os.path.join(work, "checkpoints"), out)
ck = checkpoint.Checkpointer(out, read_only=True)
raw = ck.restore_raw(2)
ck.close()
flat = traverse_util.flatten_dict(raw, sep="/")
sums = {
  k: float(np.asarray(v, np.float64).sum()) for k, v in sorted(flat.items())
}
with open(out + ".json", "w") as f:
  json.dump(
    {
      "commit": "d8675ba",
      "config": (
        "configs/shapes.py:small, model.width=0.0625, optimizer=sgd, 2 steps"
      ),
      "leaf_sums": sums,
    },
    f,
    indent=1,
  )
print(len(sums), "leaves")
