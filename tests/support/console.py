"""Reading the points the console exporter printed (one JSON document per export)."""

from __future__ import annotations

import json


def console_points(stdout: str) -> list[tuple[str, int | None, float]]:
    """``(tag, step, value)`` of every ``tensorboard.scalar`` exemplar in the exporter's output."""
    decoder, rows, index = json.JSONDecoder(), [], 0
    while (start := stdout.find('{"resource_metrics"', index)) != -1:
        document, index = decoder.raw_decode(stdout, start)
        for resource_metrics in document["resource_metrics"]:
            for scope_metrics in resource_metrics["scope_metrics"]:
                for metric in scope_metrics["metrics"]:
                    if metric["name"] != "tensorboard.scalar":
                        continue
                    for point in metric["data"]["data_points"]:
                        tag = point["attributes"]["tensorboard.tag"]
                        rows += [
                            (tag, e["filtered_attributes"].get("tensorboard.step"), e["value"])
                            for e in point["exemplars"]
                        ]
    return rows
