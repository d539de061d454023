"""Test-wide settings: one intra-op thread (the test models are tiny; threads only add overhead)."""

import torch

torch.set_num_threads(1)
