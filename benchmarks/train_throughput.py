"""Training throughput (samples per second) of the library's networks, on the CPU and a GPU.

Each row times :func:`diffusion_core.train.train` as a user calls it (minibatch draw, loss,
backward, gradient clipping, AdamW, EMA, the losses read back every ``log_every`` steps) on
random data of the right shape; the content of the data does not change the cost. A short run
first warms up (allocators, cuDNN's algorithm search, ``torch.compile``'s compilation), then a
run of ``--steps`` steps (``--unet-steps`` for the U-Net on the CPU, where one step takes
seconds) is timed, ``--repeats`` times, and the median is reported.

Networks: the MLP of the 2-D chapters (``nets.MLPDenoiser``, default size, batch 256) and, if
the library has one, the image U-Net (``nets.UNet``, default size, batch 64 of 1 x 28 x 28);
a network the library lacks is skipped with a note. On CUDA each runs in float32 (TF32 off)
and with the library's mixed precision (bf16 autocast, TF32); ``--compile`` adds compiled rows.

Run:  .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import header, synchronize, table

from diffusion_core import nets
from diffusion_core.losses import DiffusionLoss
from diffusion_core.schedules import linear_schedule
from diffusion_core.train import RunConfig, TrainConfig, train


def networks():
    """(name, constructor, data shape, batch size) of each network the library offers."""
    found = [("MLP", nets.MLPDenoiser, (2,), 256)]
    if hasattr(nets, "UNet"):
        found.append(("U-Net", nets.UNet, (1, 28, 28), 64))
    else:
        print("note: diffusion_core.nets has no UNet yet; its rows are skipped")
    return found


def throughput(make_net, shape, batch, device, steps, repeats, **settings) -> float:
    torch.manual_seed(0)
    net = make_net()
    data = torch.randn(4 * batch, *shape)
    objective = DiffusionLoss(linear_schedule(1000))

    def run(n_steps: int) -> float:
        config = TrainConfig(steps=n_steps, batch_size=batch, ema_decay=0.999)
        synchronize(device)
        start = time.perf_counter()
        train(
            net, data, objective, config, run=RunConfig(**settings), progress=False, device=device
        )
        synchronize(device)
        return time.perf_counter() - start

    run(2)  # warm-up
    return steps * batch / statistics.median(run(steps) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--unet-steps", type=int, default=3, help="U-Net steps on the CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header("Training throughput")

    devices = [] if args.no_cpu else [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows = []
    for name, make_net, shape, batch in networks():
        for device in devices:
            variants = {"float32": {"mixed_precision": False}}
            if device.type == "cuda":
                variants["bf16 + TF32"] = {"mixed_precision": True}
                if args.compile:
                    variants["bf16 + TF32, compiled"] = {"compile": True}
            slow = name == "U-Net" and device.type == "cpu"
            steps = args.unet_steps if slow else args.steps
            for variant, settings in variants.items():
                rate = throughput(make_net, shape, batch, device, steps, args.repeats, **settings)
                rows.append([name, device.type, variant, batch, steps, rate])
    headers = ["network", "device", "precision", "batch", "steps timed", "samples/s"]
    print(table(headers, rows, ["s", "s", "s", "d", "d", ",.0f"]))


if __name__ == "__main__":
    main()
