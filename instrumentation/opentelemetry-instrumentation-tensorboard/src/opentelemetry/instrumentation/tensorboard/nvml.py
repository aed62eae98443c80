"""NVIDIA GPUs as OpenTelemetry instruments, read through NVML (``nvidia-ml-py``, imported as ``pynvml``).

Part of the system metrics (:mod:`~opentelemetry.instrumentation.tensorboard.system_metrics`,
which samples them once per interval). Instruments, named and typed as OpenTelemetry's semantic
conventions for hardware name them, one series per device:

- ``hw.gpu.utilization`` (ObservableGauge, 1): ``nvmlDeviceGetUtilizationRates().gpu`` / 100, the
  share of NVML's sample period in which a kernel ran; attribute ``hw.gpu.task`` = ``general``;
- ``hw.gpu.memory.usage`` (ObservableUpDownCounter, By): ``nvmlDeviceGetMemoryInfo().used``;
- ``hw.gpu.memory.limit`` (ObservableUpDownCounter, By): ``nvmlDeviceGetMemoryInfo().total``;
- ``hw.gpu.memory.utilization`` (ObservableGauge, 1): used / total;
- ``hw.power`` (ObservableGauge, W): ``nvmlDeviceGetPowerUsage()`` (mW) / 1000;
- ``hw.temperature`` (ObservableGauge, Cel): ``nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)``.

Attributes of every series: ``hw.id`` (the NVML index as text, ``"0"``, ``"1"``: nvidia-smi's
numbering, which MLflow's ``gpu_<i>`` keys use too; ``CUDA_VISIBLE_DEVICES`` does not renumber
it), ``hw.name`` (the device's name, e.g. ``NVIDIA A100-SXM4-80GB``), ``hw.vendor`` (``nvidia``);
``hw.power`` and ``hw.temperature``, which the conventions share among hardware types, also carry
``hw.type`` = ``gpu``.

A reading a device does not offer (NVML answers ``NotSupported``, as consumer boards do for power
on some models) is left out for that device and said once. Without ``pynvml``, without the NVML
library (no NVIDIA driver), or with no device, one log line says so and there are no GPU
instruments: the rest of the system metrics go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from opentelemetry.instrumentation.tensorboard.capture import warn_once

GPU_UTILIZATION = "hw.gpu.utilization"
GPU_MEMORY_USAGE = "hw.gpu.memory.usage"
GPU_MEMORY_LIMIT = "hw.gpu.memory.limit"
GPU_MEMORY_UTILIZATION = "hw.gpu.memory.utilization"
POWER = "hw.power"
TEMPERATURE = "hw.temperature"

HW_ID = "hw.id"
HW_NAME = "hw.name"
HW_VENDOR = "hw.vendor"
HW_TYPE = "hw.type"
GPU_TASK = "hw.gpu.task"

Reading = Callable[[Any], "float | None"]


class Gpus:
    """The devices NVML found, each with its attributes; :meth:`close` shuts NVML down."""

    def __init__(self, pynvml: Any, handles: list[Any]) -> None:
        self._nvml = pynvml
        self.handles = handles
        self.attributes = [
            {HW_ID: str(index), HW_NAME: _text(pynvml.nvmlDeviceGetName(handle)), HW_VENDOR: "nvidia"}
            for index, handle in enumerate(handles)
        ]

    def instruments(self, meter: Meter) -> None:
        """Creates the instruments of the module docstring on ``meter``."""
        nvml = self._nvml

        def memory(handle: Any) -> Any:
            return nvml.nvmlDeviceGetMemoryInfo(handle)

        def memory_share(handle: Any) -> float | None:
            info = memory(handle)
            return info.used / info.total if info.total else None

        gpu = {HW_TYPE: "gpu"}
        for name, kind, unit, read, extra, description in (
            (
                GPU_UTILIZATION,
                "gauge",
                "1",
                lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100,
                {GPU_TASK: "general"},
                "Share of the time the GPU ran a kernel, over NVML's sample period.",
            ),
            (GPU_MEMORY_USAGE, "updown", "By", lambda h: memory(h).used, {}, "GPU memory used."),
            (GPU_MEMORY_LIMIT, "updown", "By", lambda h: memory(h).total, {}, "Size of the GPU memory."),
            (GPU_MEMORY_UTILIZATION, "gauge", "1", memory_share, {}, "Share of the GPU memory used."),
            (POWER, "gauge", "W", lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000, gpu, "Power the GPU draws."),
            (
                TEMPERATURE,
                "gauge",
                "Cel",
                lambda h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
                gpu,
                "Temperature of the GPU die.",
            ),
        ):
            callback = self._observe(name, read, extra)
            if kind == "gauge":
                meter.create_observable_gauge(name, [callback], unit=unit, description=description)
            else:
                meter.create_observable_up_down_counter(name, [callback], unit=unit, description=description)

    def _observe(
        self, name: str, read: Reading, extra: dict[str, str]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        nvml = self._nvml

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            observations = []
            for handle, attributes in zip(self.handles, self.attributes, strict=True):
                try:
                    value = read(handle)
                except nvml.NVMLError as exc:
                    warn_once(
                        f"nvml:{name}:{attributes[HW_ID]}",
                        "system metrics: GPU %s (%s) gives no %s (NVML: %s); it is left out",
                        attributes[HW_ID],
                        attributes[HW_NAME],
                        name,
                        exc,
                    )
                    continue
                if value is not None:
                    observations.append(Observation(value, {**attributes, **extra}))
            return observations

        return observe

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def start(meter: Meter) -> Gpus | None:
    """The GPU instruments on ``meter``, or ``None`` with one log line saying why there are none."""
    try:
        import pynvml  # noqa: PLC0415 - optional: nvidia-ml-py
    except ImportError:
        _none("nvidia-ml-py (pynvml) is not installed")
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        _none(f"NVML cannot start ({exc}): no NVIDIA driver on this machine")
        return None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(pynvml.nvmlDeviceGetCount())]
        gpus, why = (Gpus(pynvml, handles) if handles else None), "NVML finds no GPU"
    except pynvml.NVMLError as exc:
        gpus, why = None, f"NVML cannot list the GPUs ({exc})"
    if gpus is None:
        _none(why)
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
        return None
    gpus.instruments(meter)
    return gpus


def _none(why: str) -> None:
    warn_once("nvml", "system metrics: no GPU metrics: %s", why)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
