"""A training loop that only logs through TensorBoard, slowly enough for faults to hit it mid-run.

    paced_train.py STEPS PAUSE_SECONDS

Writes ``loss`` = 1/(step+1) and ``accuracy`` = step/STEPS every step to ``runs/paced``.
"""

import sys
import time

from tensorboardX import SummaryWriter

steps, pause = int(sys.argv[1]), float(sys.argv[2])
writer = SummaryWriter("runs/paced")
for step in range(steps):
    writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.add_scalar("accuracy", step / steps, step)
    time.sleep(pause)
writer.close()
print(f"logged {steps} steps")
