"""Launched on two processes by ``tests/test_trainer.py``: toy2d trained with the overrides given, under a loss
without noise (the network asked at t = 0.5 for the data itself), so runs that split the batch differently take the
same steps."""

import sys

import torch
from torch import Tensor, nn

from multigen.config import load_config
from multigen.toy2d import Toy2D, Toy2DConfig
from multigen.trainer import train


class NoiselessToy2D(Toy2D):
    def training_loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        return (model(batch, torch.full((len(batch),), 0.5)) - batch).pow(2).mean()


if __name__ == "__main__":
    train(NoiselessToy2D, load_config(Toy2DConfig, overrides=sys.argv[1:]))
