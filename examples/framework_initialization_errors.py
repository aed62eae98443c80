"""Seed example "Framework Initialization Errors": the PyTorch framework is there from the start."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import tracelet

try:
    exp = tracelet.start_logging(
        exp_name="framework_error_test",
        project="error_handling",
        backend="mlflow"
    )

    # Framework should initialize automatically
    assert "pytorch" in exp._frameworks

except Exception as e:
    print(f"Framework initialization failed: {e}")
    # Continue without framework features
    exp.log_metric("basic_metric", 1.0)
