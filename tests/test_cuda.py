"""The CUDA path: no host synchronisation in sampling loops, CPU/GPU parity, mixed precision.

Every test needs a CUDA device and is skipped without one (``-m cuda`` selects them all;
``benchmarks/gpu_check.sh`` runs them with the GPU benchmarks). What each checks, and why its
tolerance is what it is:

- Sampling loops make no synchronising CUDA call: ``torch.cuda.set_sync_debug_mode("error")``
  turns any such call into an exception. It is armed from the first model call on and paused
  during each model call (the exact denoiser checks its inputs on the host; a network would
  not need to), the CUDA counterpart of the counter in ``tests/test_samplers.py``.
- Deterministic samplers give the same samples on both devices from the same starting noise
  (drawn on the CPU, copied): both compute in float64, and CPU and GPU kernels for exp, log and
  sums differ by a few units in the last place (1e-16 relative). Through 20 steps of a flow
  whose Lipschitz constant on this data is O(10), that stays below 1e-12; the tolerance 1e-9
  leaves three orders of margin.
- Stochastic samplers draw their noise from a CUDA generator (Philox, a different stream from
  the CPU's): the check is in law, the sliced W2 to exact samples within 1.5 times the noise
  floor at 250 steps, the bound the CPU tests use.
- A short float32 training run lands at the same weights on both devices: the random draws come
  from the same CPU generators, so the two runs differ only in rounding (1e-7 per operation).
  Measured on a CPU by changing the summation order of the gradient (two half-batches), the
  weights after 200 steps differ by 2e-7 relative; the tolerance is 1e-4. With bf16 autocast
  (8-bit mantissa) the run is a different one and only its loss is compared: mean of the last
  50 losses within 5%.
"""

import statistics

import pytest
import torch

from diffusion_core import samplers
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.device import (
    autocast_context,
    per_sample_generators,
    per_sample_noise,
    sample_seeds,
)
from diffusion_core.losses import DiffusionLoss
from diffusion_core.metrics import sliced_wasserstein, sliced_wasserstein_floor
from diffusion_core.nets import MLPDenoiser
from diffusion_core.parameterization import as_denoiser, exact_denoiser
from diffusion_core.schedules import linear_schedule
from diffusion_core.train import RunConfig, TrainConfig, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
DETERMINISTIC = ["ddim", "euler", "heun", "dpm_solver_pp_2m", "unipc"]
STOCHASTIC = ["ddpm", "euler_maruyama", "predictor_corrector"]


@pytest.fixture(scope="module")
def mixture():
    return default_mixture_2d()


@pytest.fixture(scope="module")
def schedule():
    return linear_schedule(1000)


@pytest.fixture(autouse=True)
def restore_cuda_settings():
    """Leave the sync check off and the TF32 flags as found, whatever a test does."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.cuda.set_sync_debug_mode(0)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def starting_noise(grid, n, device):
    """x_T for n samples, drawn per sample on the CPU (the same on every device)."""
    z = per_sample_noise((n, 2), sample_seeds(0, range(n)))
    return (grid.std[0] * z).to(device)


# ------------------------------------------------------------ no host synchronisation


def sync_checked(model):
    """Arm the sync check at the first model call; pause it during every model call."""

    def checked(x, point):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return model(x, point)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    return checked


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_sampling_loops_make_no_synchronising_cuda_call(name, mixture, schedule):
    grid = schedule.grid(6)
    x = starting_noise(grid, 256, CUDA)
    generator = torch.Generator(device=CUDA).manual_seed(1)
    model = sync_checked(exact_denoiser(mixture))
    try:
        out = samplers.SAMPLERS[name](model, x, grid, generator)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.device.type == "cuda" and bool(torch.isfinite(out).all())
    # The check does catch a synchronising call.
    torch.cuda.set_sync_debug_mode("error")
    with pytest.raises(RuntimeError, match="synchroniz"):
        out.sum().item()


# ------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_agree_on_cpu_and_cuda(name, mixture, schedule):
    grid = schedule.grid(20)
    model = exact_denoiser(mixture)
    cpu = samplers.SAMPLERS[name](model, starting_noise(grid, 2000, "cpu"), grid)
    gpu = samplers.SAMPLERS[name](model, starting_noise(grid, 2000, CUDA), grid)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float64
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_reach_the_noise_floor_on_cuda(name, mixture, schedule):
    n = 2000
    grid = schedule.grid(250)
    generator = torch.Generator(device=CUDA).manual_seed(2)
    out = samplers.SAMPLERS[name](
        exact_denoiser(mixture), starting_noise(grid, n, CUDA), grid, generator
    )
    data = mixture.sample(n, torch.Generator().manual_seed(3))
    floor = float(sliced_wasserstein_floor(mixture.sample, n))
    assert float(sliced_wasserstein(out.cpu(), data)) < 1.5 * floor


def test_per_sample_noise_is_batch_invariant_with_cuda_generators():
    small = per_sample_noise((4, 3, 8, 8), sample_seeds(9, range(4)), CUDA)
    large = per_sample_noise((64, 3, 8, 8), sample_seeds(9, range(64)), CUDA)
    assert small.device.type == "cuda"
    assert torch.equal(small, large[:4])


def test_per_sample_cuda_generators_make_ddpm_paths_batch_invariant(mixture, schedule):
    grid = schedule.grid(20)
    seeds = sample_seeds(4, range(8))
    x = starting_noise(grid, 8, CUDA)
    model = exact_denoiser(mixture)
    whole = samplers.ddpm(model, x, grid, per_sample_generators(seeds, CUDA))
    part = samplers.ddpm(model, x[[5, 2]], grid, per_sample_generators([seeds[5], seeds[2]], CUDA))
    torch.testing.assert_close(part, whole[[5, 2]], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="generator must be on the device of the samples"):
        samplers.ddpm(model, x, grid, torch.Generator().manual_seed(0))


def test_sampling_a_network_on_cuda_matches_the_cpu():
    # The grid (and so the time t handed to the model) stays on the CPU while x is on the GPU:
    # the network must take t to x's device. float32 network, TF32 off: rounding only (the
    # outputs of this untrained net reach 2e3; float32 against float64 differs by 2e-4 there).
    torch.manual_seed(0)
    net = MLPDenoiser(hidden=32, depth=2, time_dim=16).eval()
    schedule = linear_schedule(1000)
    grid = schedule.grid(20)
    outputs = []
    for device in ("cpu", CUDA):
        model = as_denoiser(net.to(device), "eps")
        with torch.no_grad():
            outputs.append(samplers.ddim(model, starting_noise(grid, 512, device).float(), grid))
    torch.testing.assert_close(outputs[1].cpu(), outputs[0], rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------- training


def train_run(device, **changes):
    data = default_mixture_2d().sample(4096, torch.Generator().manual_seed(1)).float()
    torch.manual_seed(0)
    net = MLPDenoiser(hidden=32, depth=2, time_dim=16)
    steps = changes.pop("steps", 200)  # the other changes are RunConfig fields
    config = TrainConfig(steps=steps, batch_size=128, lr=3e-3)
    objective, run = DiffusionLoss(linear_schedule(1000)), RunConfig(**changes)
    result = train(net, data, objective, config, run=run, progress=False, device=device)
    weights = torch.cat([p.detach().cpu().double().flatten() for p in net.parameters()])
    return result.losses, weights


@pytest.fixture(scope="module")
def cpu_run():
    return train_run("cpu")


def record_tf32_during_training(monkeypatch) -> list[bool]:
    """The TF32 matmul flag at every step of the runs to come (read where the EMA is updated,
    which these tests do not look at)."""
    import diffusion_core.train as train_module

    flags = []
    monkeypatch.setattr(
        train_module, "update_ema", lambda *_: flags.append(torch.backends.cuda.matmul.allow_tf32)
    )
    return flags


def test_float32_training_lands_at_the_same_weights(cpu_run, monkeypatch):
    flags = record_tf32_during_training(monkeypatch)
    torch.backends.cuda.matmul.allow_tf32 = True
    losses, weights = train_run(CUDA, mixed_precision=False)  # full float32, TF32 off
    assert flags == [False] * 200  # off during the run
    assert torch.backends.cuda.matmul.allow_tf32  # and as found afterwards
    assert float((weights - cpu_run[1]).norm() / cpu_run[1].norm()) < 1e-4
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(cpu_run[0]), rtol=1e-4, atol=0)


def test_mixed_precision_training_lands_close(cpu_run, monkeypatch):
    flags = record_tf32_during_training(monkeypatch)
    torch.backends.cuda.matmul.allow_tf32 = False
    losses, _ = train_run(CUDA)  # bf16 autocast, TF32
    assert flags == [True] * 200 and not torch.backends.cuda.matmul.allow_tf32
    late, reference = statistics.mean(losses[-50:]), statistics.mean(cpu_run[0][-50:])
    assert abs(late - reference) < 0.05 * reference, (late, reference)


def test_autocast_runs_products_in_bfloat16_and_keeps_float32_weights():
    net = torch.nn.Linear(8, 8).to(CUDA)
    x = torch.randn(4, 8, device=CUDA)
    with autocast_context(CUDA):
        y = net(x)
        loss = y.float().square().mean()
    assert y.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert net.weight.dtype == torch.float32 and net.weight.grad.dtype == torch.float32
    with autocast_context(CUDA, enabled=False):
        assert net(x).dtype == torch.float32


def test_compiled_training_matches_eager_training():
    eager, _ = train_run(CUDA, mixed_precision=False, steps=20)
    compiled, _ = train_run(CUDA, mixed_precision=False, steps=20, compile=True)
    # Inductor fuses the element-wise work, which rounds differently: float32 rounding only.
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_like_one(tmp_path):
    from test_distributed import CASES, launch, relative_error, run

    zero = launch(tmp_path, "cuda")[0]["results"]
    for case, (dtype, _, _) in CASES.items():
        single = run(case, CUDA, mixed_precision=False)
        tolerance = 1e-10 if dtype == torch.float64 else 1e-4
        for name, expected in single["net"].items():
            assert relative_error(zero[case]["net"][name].cpu(), expected.cpu()) < tolerance


def test_cuda_training_reuses_the_cpu_generators(cpu_run):
    # Same config on both devices draws the same minibatches, times and noise: the first loss,
    # computed before any update, agrees to float32 rounding.
    losses, _ = train_run(CUDA, mixed_precision=False, steps=1)
    assert losses[0] == pytest.approx(cpu_run[0][0], rel=1e-5)
