"""One-shot search: a search space compiled into one weight-sharing supernet.

- :mod:`.plan` (no JAX): which weights the space's networks share, and each subnet's settings, read off
  its lowered network (:class:`~.plan.SharedSpace`).
- :mod:`.model`: the supernet's forward pass, with the subnet as an input (one executable for all).
- :mod:`.train`: SPOS or BigNAS-sandwich training, checkpointed and resumable (:func:`~.train.train_supernet`).
- :mod:`.evaluate`: a trained supernet loaded once; score subnets after BN recalibration, extract them
  as standalone checkpoints (:class:`~.evaluate.Supernet`).

The JAX modules are imported on use, so importing the plan stays cheap.
"""

from __future__ import annotations

from typing import Any

from .plan import Plan, SharedSpace

__all__ = ["Plan", "SharedSpace", "Supernet", "train_supernet"]


def __getattr__(name: str) -> Any:
    if name == "Supernet":
        from .evaluate import Supernet

        return Supernet
    if name == "train_supernet":
        from .train import train_supernet

        return train_supernet
    raise AttributeError(name)
