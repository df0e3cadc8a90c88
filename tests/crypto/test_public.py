"""The public surface of qchan.crypto."""

from __future__ import annotations

import inspect
from typing import get_type_hints

import qchan.crypto
from qchan.crypto import ClusterKey, NodeKey, NoiseHandshake, TransportCipher


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(qchan.crypto).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(qchan.crypto.__all__) == public
    assert len(qchan.crypto.__all__) == len(public)


def test_classes_are_final_and_typed() -> None:
    for cls in (NodeKey, ClusterKey, NoiseHandshake, TransportCipher):
        assert getattr(cls, "__final__", False), cls
    assert get_type_hints(NoiseHandshake.receive)["return"] == bytes | None
