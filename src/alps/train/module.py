"""LightningModule: cross-entropy training with poly LR, sliding-window validation on whole images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from alps.train.config import LOSSES
from alps.train.inference import sliding_window_logits
from alps.train.metrics import ConfusionMatrixMetric, scores_from_confusion
from alps.train.models import build_model


class SegmentationModule(L.LightningModule):
    """An smp network plus what is needed to use it later: classes, crop size, normalisation.

    All constructor arguments are saved in the checkpoint (``hyper_parameters``), so
    :meth:`load_from_checkpoint` rebuilds the network without the run's config.
    """

    def __init__(
        self,
        arch: str,
        encoder: str,
        num_classes: int,
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        optimizer: str = "adamw",
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        max_steps: int = 1000,
        eval_stride: int | None = None,
        loss: str = "ce",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = build_model(arch, encoder, num_classes, img_size=crop_size)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.val_cm = ConfusionMatrixMetric(num_classes, ignore_index)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.dice: nn.Module | None = (
            DiceLoss("multiclass", from_logits=True, ignore_index=ignore_index) if loss == "ce+dice" else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images → ``(B, K, H, W)`` logits."""
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over non-ignored pixels (0, with a gradient, when a batch has none), plus
        smp's multiclass soft Dice loss with ``loss="ce+dice"``."""
        per_pixel = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="sum")
        count = (target != self.ignore_index).sum().clamp(min=1)
        ce = per_pixel / count
        if self.dice is None:
            return ce
        dice: torch.Tensor = self.dice(logits.float(), target)
        return ce + dice

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = self.loss(self(images), labels)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor, Any], batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        probs = sliding_window_logits(
            self, images, self.num_classes, self.hparams["crop_size"], self.hparams["eval_stride"]
        )
        valid = labels != self.ignore_index
        nll = F.nll_loss(
            probs.clamp_min(1e-8).log(), labels.clamp(max=self.num_classes - 1), reduction="none"
        )
        self.log(
            "val/loss", (nll * valid).sum() / valid.sum().clamp(min=1), sync_dist=True, batch_size=len(images)
        )
        self.val_cm.update(probs.argmax(1), labels)

    def on_validation_epoch_end(self) -> None:
        scores = scores_from_confusion(self.val_cm.compute(), self.class_names)
        self.val_cm.reset()
        for name, value in (("val/miou", scores.miou), ("val/oa", scores.oa), ("val/mf1", scores.mf1)):
            # every rank holds the same, already summed matrix; sync_dist only keeps Lightning quiet
            self.log(name, value, prog_bar=name == "val/miou", sync_dist=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": hp["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer: torch.optim.Optimizer
        if hp["optimizer"] == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp["lr"], momentum=0.9)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp["lr"])
        warmup, total = int(hp["warmup_steps"]), max(1, int(hp["max_steps"]))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, 1 - step / total) ** 0.9

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
