"""Seed example "PyTorch Lightning Integration": Lightning's self.log, through its TensorBoardLogger, into MLflow.

The LightningModule is the document's (with ``import torch`` added); the lines after it (a small
random dataset and a CPU Trainer) are added so the example runs on its own.
"""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import pytorch_lightning as pl
import torch
import tracelet
from torch.utils.tensorboard import SummaryWriter

class LightningModelWithTracelet(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(28*28, 10)

        # Start Tracelet experiment
        self.experiment = tracelet.start_logging(
            exp_name="lightning_integration",
            project="pytorch_lightning",
            backend="mlflow"
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x.view(x.size(0), -1)
        y_hat = self.layer(x)
        loss = torch.nn.functional.cross_entropy(y_hat, y)

        # Log with TensorBoard (automatically captured by Tracelet)
        self.log('train_loss', loss)

        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        x = x.view(x.size(0), -1)
        y_hat = self.layer(x)
        loss = torch.nn.functional.cross_entropy(y_hat, y)

        self.log('val_loss', loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.001)

    def on_train_end(self):
        # Clean up Tracelet
        tracelet.stop_logging()


# Added so the example runs on its own: random 28x28 "images", 10 classes, two short epochs on CPU.
if __name__ == "__main__":
    from torch.utils.data import DataLoader, TensorDataset

    def random_images(count):
        return TensorDataset(torch.rand(count, 1, 28, 28), torch.randint(0, 10, (count,)))

    model = LightningModelWithTracelet()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        model,
        DataLoader(random_images(64), batch_size=16, shuffle=True),
        DataLoader(random_images(32), batch_size=16),
    )
