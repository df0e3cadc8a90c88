"""Fixtures for the CLI tests: key files, and one long-lived node shared by a module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qchan import ClusterKey, NodeKey
from tests.cli._helpers import NodeProcess


@dataclass(frozen=True)
class Keys:
    cluster: Path  # the cluster's key
    other_cluster: Path  # another cluster's key
    node: Path  # a node key
    directory: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    ClusterKey.generate().save(directory / "cluster.key")
    ClusterKey.generate().save(directory / "other.key")
    NodeKey.generate().save(directory / "node.key")
    return Keys(
        directory / "cluster.key", directory / "other.key", directory / "node.key", directory
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[NodeProcess]:
    """``qchan node start`` with channels and --run functions, for a whole test module."""
    process = NodeProcess(
        tmp_path_factory.mktemp("node"),
        "hub",
        keys.cluster,
        "--key",
        str(keys.node),
        "--channel",
        "jobs:4",
        "--channel",
        "meet",
        "--channel",
        "pile:inf",
        "--run",
        "app:doubler",
        "--run",
        "app:echo",
        "--run",
        "app:finite",
    )
    try:
        yield process
    finally:
        process.stop()
