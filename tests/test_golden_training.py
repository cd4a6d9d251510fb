"""Behaviour kept through the merge of the four training loops into :func:`diffusion_core.train.
train` with pluggable objectives.

``tests/golden/training.pt`` holds what the library computed before the merge (commit 81bbd84),
on one CPU thread: the loss of every step and a SHA-256 hash of the final weights (and of the
EMA) of short runs of each trainer (a diffusion MLP, unconditional and class-conditional with
label dropout; the autoencoder; the digits classifier; the latent diffusion model), one run
resumed from a checkpoint, and the outputs of the committed checkpoints on fixed inputs. The
same runs with today's API must give the same numbers bit for bit: the draws, their order and
the arithmetic of every step are unchanged (``q_sample`` computes the latent z_t exactly as the
latent trainer's inline formula did: the same float64 products and sum).
"""

import hashlib
import pathlib
import tempfile

import pytest
import torch
from torch import nn

from diffusion_core import checkpoints, images
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.autoencoder import AutoencoderConfig, train_autoencoder
from diffusion_core.latent import LatentConfig, load_latent_model, train_latent_diffusion
from diffusion_core.losses import DiffusionLoss
from diffusion_core.nets import MLPDenoiser
from diffusion_core.schedules import linear_schedule
from diffusion_core.train import RunConfig, TrainConfig, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = torch.load(ROOT / "tests" / "golden" / "training.pt", weights_only=True)
SETTINGS = {"steps": 30, "batch_size": 32, "lr": 3e-3, "ema_decay": 0.9, "seed": 1}
LOSS = {"prediction": "v", "weighting": "min_snr"}
CLIPPED = {"grad_clip": 0.5, "weight_decay": 0.01}

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class ConditionalMLP(nn.Module):
    """A class-conditional toy denoiser: a learned offset per label added to the input."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.offsets = nn.Embedding(num_classes + 1, 2)
        self.mlp = MLPDenoiser(hidden=16, depth=1, time_dim=8)

    def forward(self, x, t, labels):
        return self.mlp(x + self.offsets(labels).to(x.dtype), t)


def digest(module: nn.Module) -> str:
    """SHA-256 of the names and the bytes of every tensor of the state dict, in order."""
    sha = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        sha.update(name.encode())
        sha.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return sha.hexdigest()


def assert_as_recorded(name: str, losses, net: nn.Module, ema: nn.Module | None = None):
    assert torch.equal(torch.tensor(losses, dtype=torch.float64), GOLDEN[f"{name}/losses"])
    assert digest(net) == GOLDEN[f"{name}/net_sha256"]
    if ema is not None:
        assert digest(ema) == GOLDEN[f"{name}/ema_sha256"]


@pytest.fixture(scope="module")
def mixture():
    data, labels = default_mixture_2d().sample_with_labels(512, torch.Generator().manual_seed(0))
    return data.float(), labels


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return MLPDenoiser(hidden=16, depth=1, time_dim=8)


def test_diffusion_run_is_as_recorded(mixture):
    net = tiny_mlp()
    objective = DiffusionLoss(linear_schedule(100), **LOSS)
    result = train(net, mixture[0], objective, TrainConfig(**SETTINGS, **CLIPPED), progress=False)
    assert_as_recorded("diffusion", result.losses, net, result.ema)


def test_class_conditional_run_is_as_recorded(mixture):
    torch.manual_seed(0)
    net = ConditionalMLP(3)
    objective = DiffusionLoss(linear_schedule(100), label_dropout=0.25, null_label=3)
    config = TrainConfig(**(SETTINGS | {"seed": 2}))
    result = train(net, mixture[0], objective, config, labels=mixture[1], progress=False)
    assert_as_recorded("conditional", result.losses, net, result.ema)


def test_resumed_run_is_as_recorded(mixture):
    objective = DiffusionLoss(linear_schedule(100), **LOSS)
    with tempfile.TemporaryDirectory() as directory:
        run = RunConfig(checkpoint_path=pathlib.Path(directory) / "run.safetensors")
        config = TrainConfig(**(SETTINGS | {"steps": 20}), **CLIPPED)
        train(tiny_mlp(), mixture[0], objective, config, run=run, progress=False)
        net = tiny_mlp(seed=99)
        config = TrainConfig(**(SETTINGS | {"steps": 40}), **CLIPPED)
        result = train(
            net, mixture[0], objective, config, progress=False, resume_from=run.checkpoint_path
        )
    assert_as_recorded("resumed", result.losses, net, result.ema)


@pytest.fixture(scope="module")
def digits():
    return images.load_digits_split()


def test_autoencoder_run_is_as_recorded(digits):
    config = AutoencoderConfig(channels=4, steps=5, batch_size=8, seed=3)
    result = train_autoencoder(digits.train_images[:64], config, progress=False)
    assert result.ema is None
    assert_as_recorded("autoencoder", result.losses, result.net)


def test_classifier_run_is_as_recorded(digits):
    result = images.train_classifier(digits.train_images, digits.train_labels, steps=5)
    assert result.ema is None
    assert_as_recorded("classifier", result.losses, result.net)


def test_latent_diffusion_run_is_as_recorded(digits):
    config = LatentConfig(
        channels=(8, 16),
        text_dim=16,
        text_layers=1,
        heads=2,
        T=100,
        steps=6,
        batch_size=8,
        autoencoder_steps=3,
        seed=5,
    )
    result = train_latent_diffusion(
        digits.train_images[:64], digits.train_labels[:64], config, progress=False
    )
    assert torch.equal(torch.tensor(result.losses, dtype=torch.float64), GOLDEN["latent/losses"])
    assert digest(result.ema) == GOLDEN["latent/ema_sha256"]


@torch.no_grad()
def test_committed_checkpoints_give_the_recorded_outputs():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(4, 1, 8, 8, generator=generator)
    t, labels = torch.tensor([1, 250, 600, 1000]), torch.tensor([0, 3, 7, 10])
    net, _ = images.load_digits_model(checkpoints.packaged("digits_unconditional"))
    assert torch.equal(net(x, t), GOLDEN["checkpoint/digits_unconditional"])
    net, _ = images.load_digits_model(checkpoints.packaged("digits_conditional"))
    assert torch.equal(net(x, t, labels), GOLDEN["checkpoint/digits_conditional"])
    model, _ = load_latent_model(checkpoints.packaged("latent_digits"))
    z = torch.randn(3, 2, 4, 4, generator=generator)
    context, mask = model.encode_prompts(["a thin seven", "2", ""])
    eps = model.eps(z, torch.tensor([5, 400, 999]), context, mask)
    assert torch.equal(eps, GOLDEN["checkpoint/latent_eps"])
    assert torch.equal(model(z, torch.tensor([5, 400, 999]), ["a thin seven", "2", ""]), eps)
    assert torch.equal(model.decode_latents(z), GOLDEN["checkpoint/latent_decode"])
    assert torch.equal(model.encode_images(x.clamp(-1, 1)), GOLDEN["checkpoint/latent_encode"])
