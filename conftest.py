"""Test-session setup shared by tests/ and the docstring examples in src/."""

import torch

# `make test` runs two pytest-xdist workers on CI's two cores: one torch thread each. With
# torch's default (one thread per core) the workers oversubscribe the CPU and the suite runs
# many times slower.
torch.set_num_threads(1)
