"""Tests for :mod:`diffusion_core.distributed`: sharding, and DDP training that equals one process.

The end-to-end test launches this very file with ``torchrun`` on two CPU processes (gloo),
trains a small MLP for ten steps on a global batch of 64 (32 per process) and compares the
weights, the EMA and the losses with a single-process run of the same configuration.

Why the results agree only to rounding. One process sums the gradient over 64 samples inside
its matrix products; two processes each sum over 32 and the all-reduce adds the two halves. The
additions happen in another order, so each gradient differs by a few units in the last place
(relative 1e-16 in float64, 1e-7 in float32). Ten AdamW steps carry that forward without
amplifying it much: Adam's update m / sqrt(v) is scale-free, so a relative change of the
gradient is a change of the same relative size of the step. Measured: relative differences of
2e-16 (float64) and 1e-7 (float32) in the weights and the losses. The tolerances below (1e-10
and 1e-5, in norm relative to each tensor) leave two or more orders of margin and stay far
below what a real mistake does (a wrong shard, a gradient summed instead of averaged, another
batch or noise draw: relative 1e-2 or more).
"""

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from diffusion_core import distributed
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.autoencoder import ConvVAE, ELBOLoss
from diffusion_core.losses import DiffusionLoss
from diffusion_core.nets import MLPDenoiser
from diffusion_core.schedules import linear_schedule
from diffusion_core.train import RunConfig, TrainConfig, train

WORLD = 2
CASES = {  # name: (dtype, conditional, relative tolerance)
    "float64": (torch.float64, False, 1e-10),
    "float32": (torch.float32, False, 1e-5),
    "conditional": (torch.float64, True, 1e-10),
    "autoencoder": (torch.float64, False, 1e-10),
}


class ConditionalMLP(nn.Module):
    """A class-conditional toy net: a learned offset per label added to the input."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.offsets = nn.Embedding(num_classes + 1, 2)  # the last label is the null class
        self.mlp = MLPDenoiser(hidden=32, depth=2, time_dim=16)

    def forward(self, x, t, labels):
        return self.mlp(x + self.offsets(labels).to(x.dtype), t)


def problem(case: str):
    """The net (seeded weights), data, labels, objective and config of one case: a denoiser
    on the 2-D mixture, or (case "autoencoder") a small ConvVAE on random 8x8 images, whose
    objective draws its posterior noise for the global batch and calls the net's forward."""
    dtype, conditional, _ = CASES[case]
    torch.manual_seed(0)
    net = ConditionalMLP(3) if conditional else MLPDenoiser(hidden=32, depth=2, time_dim=16)
    mixture = default_mixture_2d()
    data, labels = mixture.sample_with_labels(512, torch.Generator().manual_seed(1))
    settings = {"prediction": "v", "label_dropout": 0.25, "null_label": 3} if conditional else {}
    objective = DiffusionLoss(linear_schedule(1000), **settings)
    if case == "autoencoder":
        net, objective = ConvVAE(channels=4), ELBOLoss(kl_weight=0.01)
        data = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    config = TrainConfig(steps=10, batch_size=64, lr=1e-2, weight_decay=0.01, ema_decay=0.9, seed=3)
    return net.to(dtype), data.to(dtype), labels if conditional else None, objective, config


def run(case: str, device=None, **changes):
    """Train one case in this process; ``changes`` are RunConfig fields."""
    net, data, labels, objective, config = problem(case)
    result = train(
        net,
        data,
        objective,
        config,
        labels=labels,
        run=RunConfig(**changes),
        progress=False,
        device=device,
    )
    return {"net": net.state_dict(), "ema": result.ema.state_dict(), "losses": result.losses}


def worker(out_dir: pathlib.Path, device_name: str) -> None:
    """What each torchrun process does: train every case, count checkpoint writes, save.

    On GPUs mixed precision is off: the comparison is of float32 (or float64) reduction order.
    """
    import diffusion_core.train as train_module

    torch.set_num_threads(1)
    device = distributed.setup(device_name)
    writes = []
    train_module.save_checkpoint = lambda path, state: writes.append(state["step"])
    changes = {"checkpoint_every": 5, "checkpoint_path": "unused", "mixed_precision": False}
    results = {case: run(case, device, **changes) for case in CASES}
    rank, size = distributed.rank(), distributed.world_size()
    distributed.cleanup()
    torch.save({"results": results, "writes": writes, "world": size}, out_dir / f"rank{rank}.pt")


def launch(out_dir: pathlib.Path, device_name: str = "cpu", processes: int = WORLD) -> list[dict]:
    """Run :func:`worker` under torchrun on ``processes`` processes; return each rank's results."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        __file__,
        str(out_dir),
        device_name,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(processes)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The saved results of a two-process CPU (gloo) launch of :func:`worker`."""
    return launch(tmp_path_factory.mktemp("ddp"))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_like_one(ranks, case):
    single = run(case)
    tolerance = CASES[case][2]
    zero = ranks[0]["results"][case]
    assert ranks[0]["world"] == WORLD
    for key in ("net", "ema"):
        for name, expected in single[key].items():
            error = relative_error(zero[key][name], expected)
            assert error < tolerance, f"{case} {key}.{name}: relative error {error:.2e}"
    losses, expected = torch.tensor(zero["losses"]), torch.tensor(single["losses"])
    assert len(losses) == 10
    torch.testing.assert_close(losses, expected, rtol=tolerance, atol=0)
    # And the run did move the weights: the comparison is not between two initial states.
    initial = problem(case)[0].state_dict()
    assert max(relative_error(single["net"][n], initial[n]) for n in initial) > 1e-2


def test_every_process_ends_with_the_same_weights_and_loss(ranks):
    # DDP hands every process the same averaged gradient, so the weights agree bit for bit.
    for case in CASES:
        first, second = (r["results"][case] for r in ranks)
        for name, value in first["net"].items():
            assert torch.equal(value, second["net"][name]), (case, name)
        assert first["losses"] == second["losses"]


def test_only_rank_zero_writes_checkpoints(ranks):
    assert ranks[0]["writes"] == [5, 10] * len(CASES)
    assert ranks[1]["writes"] == []


# ------------------------------------------------------------------- single-process behaviour


def test_outside_torchrun_everything_answers_as_one_process(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched()
    assert distributed.setup("cpu") == torch.device("cpu")
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.is_main_process()
    x = torch.arange(6.0)
    assert distributed.shard(x, None)[0] is x
    assert distributed.average(x) is x
    net = nn.Linear(2, 2)
    assert distributed.wrap(net, torch.device("cpu")) is net
    distributed.barrier()
    distributed.cleanup()


@pytest.fixture
def as_rank(monkeypatch):
    """Pretend to be process ``rank`` of ``size`` (only shard's arithmetic is exercised)."""

    def pretend(rank, size):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: size)

    return pretend


def test_shards_partition_the_global_batch_in_order(as_rank):
    batch, labels = torch.arange(24.0).reshape(12, 2), torch.arange(12)
    pieces = []
    for rank in range(3):
        as_rank(rank, 3)
        x, none, y = distributed.shard(batch, None, labels)
        assert none is None and torch.equal(x[:, 0] / 2, y.double())
        pieces.append(x)
    assert torch.equal(torch.cat(pieces), batch)


def test_shard_rejects_uneven_and_mismatched_batches(as_rank):
    as_rank(0, 4)
    with pytest.raises(ValueError, match="does not split evenly over 4 processes"):
        distributed.shard(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="share their batch size"):
        distributed.shard(torch.zeros(8, 2), torch.zeros(4))
    with pytest.raises(TypeError, match="batch axis"):
        distributed.shard(torch.zeros(()))
    with pytest.raises(ValueError, match="at least one tensor"):
        distributed.shard(None)


if __name__ == "__main__":
    worker(pathlib.Path(sys.argv[1]), sys.argv[2])
