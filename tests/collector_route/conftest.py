"""Fixtures of the collector route: the collector binary and a unique experiment per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from support.collector import build_collector


@pytest.fixture(scope="session")
def collector_binary() -> Path:
    return build_collector()


@pytest.fixture
def experiment() -> str:
    return f"collector-route-{uuid.uuid4().hex[:8]}"
