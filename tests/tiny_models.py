"""Tiny models the callback tests train, shared by the in-process tests and the gloo rank script
(which finds this module through PYTHONPATH, set by gloo_ranks.two_gloo_ranks)."""

import time

from torch import nn
from torch.nn import functional as F


class Regressor(nn.Module):
    """An MLP in the shape the Hugging Face Trainer expects (a dict with the loss); each forward
    pass sleeps `step_s`, so that steps last long enough to carry measurable energy."""

    def __init__(self, step_s: float):
        super().__init__()
        self.step_s = step_s
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x, labels=None):
        time.sleep(self.step_s)
        out = self.net(x)
        return {"loss": F.mse_loss(out, labels), "logits": out}
