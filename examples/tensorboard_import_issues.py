"""Seed example "TensorBoard Import Issues": without TensorBoard, fall back to logging directly."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

try:
    import tracelet

    tracelet.start_logging(
        exp_name="safe_tensorboard",
        project="error_handling",
        backend="mlflow"
    )

    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter()

except ImportError as e:
    print(f"TensorBoard not available: {e}")
    # Fall back to manual logging
    exp = tracelet.get_active_experiment()
    exp.log_metric("fallback_metric", 1.0)
