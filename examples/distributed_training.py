"""Seed example "Distributed Training": two processes, only rank 0 logs.

As in the document, with the gloo backend on CPU instead of nccl on GPUs (``.cuda(rank)`` and
``device_ids`` dropped, two processes instead of one per GPU) and the rendezvous address set.
"""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.tensorboard import SummaryWriter
import tracelet

def train_worker(rank, world_size):
    # Initialize distributed training
    dist.init_process_group("gloo", rank=rank, world_size=world_size)

    # Only rank 0 handles experiment tracking
    if rank == 0:
        tracelet.start_logging(
            exp_name="distributed_training",
            project="multi_gpu",
            backend="mlflow"
        )
        writer = SummaryWriter()

    # Create model (on CPU)
    model = torch.nn.Linear(1000, 10)
    model = torch.nn.parallel.DistributedDataParallel(model)

    for epoch in range(100):
        # Training code here...
        loss = torch.randn(1)  # Simulated loss

        # Gather losses from all ranks
        gathered_losses = [torch.zeros_like(loss) for _ in range(world_size)]
        dist.all_gather(gathered_losses, loss)

        # Only rank 0 logs metrics
        if rank == 0:
            avg_loss = torch.stack(gathered_losses).mean().item()
            writer.add_scalar("train_loss", avg_loss, epoch)

    if rank == 0:
        writer.close()
        tracelet.stop_logging()

# Launch distributed training
def main():
    world_size = 2
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    mp.spawn(train_worker, args=(world_size,), nprocs=world_size)

if __name__ == "__main__":
    main()
