"""Seed example "Custom Metric Processing": a smoothed loss logged beside the captured one."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import tracelet
from torch.utils.tensorboard import SummaryWriter

class CustomMetricProcessor:
    def __init__(self):
        self.metric_history = {}

    def process_metric(self, name, value, iteration):
        """Custom processing for specific metrics."""
        if name not in self.metric_history:
            self.metric_history[name] = []

        self.metric_history[name].append((iteration, value))

        # Log smoothed version for loss metrics
        if "loss" in name.lower():
            if len(self.metric_history[name]) >= 5:
                recent_values = [v for _, v in self.metric_history[name][-5:]]
                smoothed_value = sum(recent_values) / len(recent_values)

                # Get active experiment and log smoothed metric
                exp = tracelet.get_active_experiment()
                if exp:
                    exp.log_metric(f"{name}_smoothed", smoothed_value, iteration)

# Usage
processor = CustomMetricProcessor()

tracelet.start_logging(
    exp_name="custom_processing",
    project="advanced_features",
    backend="mlflow"
)

writer = SummaryWriter()

for epoch in range(100):
    # Noisy loss simulation
    import random
    base_loss = 1.0 / (epoch + 1)
    noisy_loss = base_loss + random.uniform(-0.1, 0.1)

    # Log original (gets processed by custom processor)
    writer.add_scalar("train_loss", noisy_loss, epoch)
    processor.process_metric("train_loss", noisy_loss, epoch)

writer.close()
tracelet.stop_logging()
