"""Run under torchrun by test_train.py: DDP steps on gloo, then each rank saves its weights."""

from __future__ import annotations

import os
import sys

import torch


def main(shards: str, out: str) -> int:
    from train_hooks.train import TrainConfig, train

    cfg = TrainConfig(
        shards=shards,
        out=out,
        context_length=64,
        subcaptions=2,
        steps=3,
        batch_size=4,
        num_workers=1,
        progress=False,
        log_keys=True,
    )
    res = train(cfg)
    rank = int(os.environ["RANK"])
    torch.save(res["model"].state_dict(), f"{out}/weights_rank{rank}.pt")
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
