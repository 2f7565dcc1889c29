"""Lightning's ``WandbLogger``, able to log checkpoints as artifacts of an offline run."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` (every argument is its own), with ``offline`` and
    ``log_model`` together.

    Lightning refuses the pair, since an offline run cannot upload. But W&B stores an offline
    run's artifacts with the run and ``wandb sync`` uploads them later, so here the run is
    started with ``wandb.init(mode="offline")`` instead and checkpoints are logged as usual:
    ``log_model=true`` logs the best (alias ``best``) and last checkpoints at the end of
    training.

    Args:
        offline: run offline (nothing leaves the machine until ``wandb sync``).
        log_model: ``False``, ``True`` (checkpoints at the end of training) or ``"all"``.
        **kwargs: the other arguments of Lightning's ``WandbLogger`` and of ``wandb.init``.
    """

    def __init__(
        self, offline: bool = False, log_model: bool | Literal["all"] = False, **kwargs: Any
    ) -> None:
        if offline and log_model:
            kwargs["mode"] = "offline"
            offline = False
        super().__init__(offline=offline, log_model=log_model, **kwargs)
