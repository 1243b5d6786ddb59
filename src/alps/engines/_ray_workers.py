"""What runs inside Ray's worker processes: the phase-A actor and the phase-C task body.

Both only call the stage functions of :mod:`alps.labeling.stages` and :meth:`Item.paint`, so a
Ray run computes exactly what the local engine computes. Units, results and painted answers
travel as pickled bytes (one binary column in Ray Data's blocks), so Ray never has to understand
our dataclasses, and no pixel, mask or feature ever enters the object store: workers read their
inputs from and write their tables to the shared output directory.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import numpy.typing as npt

from alps.core.images import ImageReadError
from alps.labeling.inputs.base import Item, PaintContext, Painted
from alps.labeling.stages import MaskJob, process_unit


def enter_driver_dir(cwd: str) -> None:
    """Work in the driver's directory (when this node has it), so relative input paths mean the same."""
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)


class MaskWorker:
    """Phase A in one actor: the mask source built once, then :func:`process_unit` per unit.

    Args:
        job: the run's :class:`MaskJob` (the model is loaded from it here, once per actor).
        device: torch device for this actor (``"cuda"`` when it holds a GPU: Ray picks which).
        threads: threads of torch and of the native pools (BLAS, OpenMP) in this actor: the local
            engine run with the same number of threads gives the same floating point.
        cwd: the driver's working directory.
    """

    def __init__(self, job: MaskJob, device: str, threads: int, cwd: str) -> None:
        import torch
        from threadpoolctl import threadpool_limits

        enter_driver_dir(cwd)
        threadpool_limits(limits=threads)  # numpy's BLAS too: Ray set OMP_NUM_THREADS to the actor's CPUs
        torch.set_num_threads(threads)
        self.job = job
        self.source = job.source(device)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """``{"unit": (B,) pickled WorkUnits}`` -> ``{"result": (B,) pickled UnitResults}``."""
        results = [
            pickle.dumps(process_unit(pickle.loads(raw), self.source, self.job)) for raw in batch["unit"]
        ]
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"result": out}


def paint_item(item: Item, split: str, ctx: PaintContext, cwd: str) -> tuple[str, Painted | str]:
    """Phase C for one item, as the local engine does it: ``(id, Painted)`` or ``(id, error)``."""
    enter_driver_dir(cwd)
    try:
        return item.file.id, item.paint(ctx, split)
    except ImageReadError as err:
        return item.file.id, str(err)
