"""Tests for the text-conditioned latent diffusion model: :class:`diffusion_core.nets.
CrossAttention` and :class:`~diffusion_core.nets.TextUNet`, :mod:`diffusion_core.latent` and
``scripts/train_latent.py``.

Cross-attention must read the prompt and only its real tokens; the training script must be
reproducible bit for bit (checked on a tiny run in two fresh processes); the committed
checkpoint must record the script's default settings, load as data only, and generate digits
that the digits classifier reads as the prompted ones.
"""

import dataclasses
import math
import pathlib
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusion_core import checkpoints
from diffusion_core.forward import q_sample
from diffusion_core.images import accuracy, digits_classifier
from diffusion_core.latent import (
    LatentConfig,
    LatentDiffusion,
    LatentDiffusionLoss,
    generate,
    load_latent_model,
    train_latent_diffusion,
)
from diffusion_core.losses import sample_t_and_noise
from diffusion_core.nets import CrossAttention, TextUNet
from diffusion_core.text import NULL_PROMPT, TextEncoder, Tokenizer, make_prompts

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINT = checkpoints.packaged("latent_digits")
sys.path.insert(0, str(ROOT / "scripts"))
import train_latent  # noqa: E402

# Prompt accuracy of the committed model with guidance weight 3 and 25 DDIM steps on these 100
# samples (seed 0), read by the digits classifier: 1.00 when the checkpoint was trained (the
# chapter measures 0.97 at w = 1 and 1.00 at w = 2..5 on 500 samples). Chance is 0.10; the bound
# allows ten misread samples.
ACCURACY_BOUND = 0.9


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _context(prompts, dim=16, seed=0):
    tokenizer = Tokenizer()
    torch.manual_seed(seed)
    encoder = TextEncoder.from_tokenizer(tokenizer, dim=dim, layers=1)
    with torch.no_grad():
        return encoder(*tokenizer.encode(prompts))


def test_cross_attention_shape_and_residual():
    torch.manual_seed(0)
    layer = CrossAttention(8, 16, heads=2)
    h = torch.randn(3, 8, 4, 4)
    context, mask = _context(["a thin seven", "two", NULL_PROMPT])
    out = layer(h, context, mask)
    assert out.shape == h.shape
    with torch.no_grad():
        layer.out.weight.zero_()
        layer.out.bias.zero_()
    torch.testing.assert_close(layer(h, context, mask), h, rtol=0, atol=0)


def test_cross_attention_reads_the_prompt_and_ignores_padding():
    torch.manual_seed(0)
    layer = CrossAttention(8, 16, heads=2)
    h = torch.randn(2, 8, 4, 4)
    context, mask = _context(["a thin seven", "a thin seven"])
    other, _ = _context(["a thin eight", "a thin eight"])
    with torch.no_grad():
        base = layer(h, context, mask)
        assert (layer(h, other, mask) - base).abs().max() > 1e-3
        garbage = context.clone()
        garbage[~mask] = 100.0 * torch.randn(int((~mask).sum()), 16)
        torch.testing.assert_close(layer(h, garbage, mask), base, rtol=0, atol=1e-6)


def test_text_unet_shapes_prompt_dependence_and_checks():
    torch.manual_seed(0)
    net = TextUNet(16, heads=2, in_channels=2, channels=(8, 16))
    assert len(net.cross) == sum(
        1 for m in net.modules() if type(m).__name__ == "_TimeResidualBlock"
    )
    z = torch.randn(2, 2, 4, 4)
    t = torch.tensor([10, 900])
    context, mask = _context(["a thin seven", "zero"])
    other, other_mask = _context(["a bold one", "9"])
    with torch.no_grad():
        out = net(z, t, context, mask)
        assert out.shape == z.shape
        assert (net(z, t, other, other_mask) - out).abs().max() > 1e-4
    with pytest.raises(ValueError, match="context"):
        net(z, t, context[:, :, :8], mask)
    with pytest.raises(TypeError, match="mask"):
        net(z, t, context, mask.long())
    with pytest.raises(ValueError, match="num_classes"):
        TextUNet(16, num_classes=10)


def test_generate_shapes_on_an_untrained_model():
    torch.manual_seed(0)
    model = LatentDiffusion(LatentConfig(channels=(8, 16), text_dim=16)).eval()
    generator = torch.Generator().manual_seed(0)
    images, latents = generate(
        model, ["7", "a thin two"], steps=3, generator=generator, return_latents=True
    )
    assert images.shape == (2, 1, 8, 8) and latents.shape == (2, 2, 4, 4)
    assert torch.isfinite(images).all()


def test_latent_objective_captions_noises_and_scores_the_latents():
    """The objective's loss is the eps-loss at q_sample's z_t of its own t and eps draws, with
    captions of the labels; prompt dropout 1 gives the empty prompt everywhere."""
    torch.manual_seed(0)
    model = LatentDiffusion(LatentConfig(channels=(8, 16), text_dim=16)).eval()
    objective = LatentDiffusionLoss(model.schedule, prompt_dropout=0.0)
    labels = torch.tensor([7, 2, 0])
    prompts = objective.condition(labels, torch.Generator().manual_seed(1))
    assert prompts == make_prompts(labels, torch.Generator().manual_seed(1))
    dropped = LatentDiffusionLoss(model.schedule, 1.0).condition(labels, torch.Generator())
    assert dropped == [NULL_PROMPT] * 3
    z0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = objective(model, z0, prompts, torch.Generator().manual_seed(3))
        t, noise = sample_t_and_noise(z0, model.schedule, torch.Generator().manual_seed(3))
        z_t = q_sample(model.schedule, z0, t, noise)
        expected = (model.eps(z_t, t, *model.encode_prompts(prompts)) - noise).square().mean()
    assert torch.equal(loss, expected)
    with pytest.raises(ValueError, match="needs labels"):
        objective.condition(None, torch.Generator())


def _tiny_run(out: pathlib.Path) -> dict:
    command = [sys.executable, str(ROOT / "scripts" / "train_latent.py"), "--steps", "3"]
    command += ["--autoencoder-steps", "2", "--seed", "5", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return checkpoints.load(out, checkpoints.LATENT_MODEL)


def test_training_script_is_bitwise_reproducible(tmp_path):
    first, second = _tiny_run(tmp_path / "a.safetensors"), _tiny_run(tmp_path / "b.safetensors")
    assert first["seed"] == second["seed"] == 5
    assert first["config"] == second["config"]
    assert first["weights"].keys() == second["weights"].keys()
    for name, tensor in first["weights"].items():
        assert torch.equal(tensor, second["weights"][name]), name
    assert torch.equal(first["losses"], second["losses"])


def test_committed_checkpoint_matches_the_script_and_loads_as_data():
    assert CHECKPOINT.stat().st_size < 3 * 2**20
    state = checkpoints.load(CHECKPOINT, checkpoints.LATENT_MODEL)
    assert state["config"] == train_latent.DEFAULT_CONFIG.to_dict()
    assert state["seed"] == train_latent.DEFAULT_CONFIG.seed
    assert dataclasses.asdict(LatentConfig(**state["config"])) == dataclasses.asdict(
        train_latent.DEFAULT_CONFIG
    )
    model, metadata = load_latent_model(CHECKPOINT)
    assert "weights" not in metadata and len(metadata["losses"]) == state["config"]["steps"]
    assert 0.1 < float(model.scale_factor) < 10


def test_generated_digits_follow_the_prompt():
    model, _ = load_latent_model(CHECKPOINT)
    labels = torch.arange(10).repeat_interleave(10)
    prompts = [f"a handwritten {label}" for label in labels.tolist()]
    images = generate(model, prompts, guidance=3.0, generator=torch.Generator().manual_seed(0))
    assert accuracy(digits_classifier(), images.clamp(-1, 1), labels) >= ACCURACY_BOUND


# --- argument checks ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return LatentDiffusion(LatentConfig(channels=(8, 16), text_dim=16, T=50)).eval()


def test_generate_refuses_bad_arguments_by_name(small_model):
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match=r"prompts must be a list of strings, got one string"):
        generate(small_model, "the digit 3", steps=2)
    with pytest.raises(ValueError, match=r"prompts must hold 1\.\.1000000 prompts, got 0"):
        generate(small_model, [], steps=2)
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a string"):
        generate(small_model, ["3", 3], steps=2)
    with pytest.raises(TypeError, match="prompts must be a list of strings, got set"):
        generate(small_model, {"3"}, steps=2)
    for guidance in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="guidance must be a finite number"):
            generate(small_model, ["3"], guidance=guidance, steps=2)
    with pytest.raises(ValueError, match=r"steps must be in 1\.\.50, got 51"):
        generate(small_model, ["3"], steps=51)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        generate(small_model, ["3"], steps=2, generator=0)
    with pytest.raises(TypeError, match="model must be a LatentDiffusion"):
        generate(object(), ["3"], steps=2, generator=generator)
    with pytest.raises(TypeError, match="return_latents must be True or False"):
        generate(small_model, ["3"], steps=2, return_latents="yes")


def test_train_latent_diffusion_checks_its_data_before_training():
    images, labels = torch.zeros(12, 1, 8, 8), torch.zeros(11, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"labels must have shape \(12,\)"):
        train_latent_diffusion(images, labels)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9, got values in -1\.\.99"):
        train_latent_diffusion(images, torch.tensor([-1, 99] + [0] * 10))
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 8, 8\) with N >= 2"):
        train_latent_diffusion(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"images must lie in \[-1, 1\]"):
        train_latent_diffusion(torch.full((12, 1, 8, 8), 2.0), labels[:1].repeat(12))
    with pytest.raises(ValueError, match="images must be finite"):
        train_latent_diffusion(torch.full((12, 1, 8, 8), math.nan), labels[:1].repeat(12))
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        train_latent_diffusion([[0.0]], labels)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"channels": "32"}, TypeError, "channels must be a non-empty tuple of ints"),
        ({"channels": ()}, TypeError, "channels must be a non-empty tuple of ints"),
        ({"channels": (8, 0)}, ValueError, r"channels\[1\] must be in 1\.\.(65536)?, got 0"),
        ({"channels": (8, 10**6)}, ValueError, r"channels\[1\] must be in 1\.\.65536"),
        ({"text_dim": 10, "heads": 4}, ValueError, r"text_dim must be divisible by heads \(4\)"),
        ({"T": 10**7}, ValueError, r"T must be in 1\.\.100000"),
        ({"steps": 10**9}, ValueError, r"steps must be in 1\.\.100000000"),
        ({"lr": math.inf}, ValueError, "lr must be a finite number"),
        ({"prompt_dropout": math.nan}, ValueError, "prompt_dropout must be a finite number"),
        ({"ema_decay": -math.inf}, ValueError, "ema_decay must be a finite number"),
    ],
)
def test_latent_config_refuses_bad_values_by_name(changes, error, message):
    with pytest.raises(error, match=message):
        LatentConfig(**changes)


def test_loading_a_checkpoint_of_another_kind_names_the_file(tmp_path):
    path = tmp_path / "digits.safetensors"
    checkpoints.save(path, {"net": {}, "ema": {}}, checkpoints.DIGITS_MODEL)
    with pytest.raises(ValueError, match=r"digits\.safetensors holds a digits denoiser"):
        load_latent_model(path)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompts=st.one_of(
        st.text(max_size=12),
        st.lists(st.sampled_from(["3", "a thin seven", "", "zebra", 7, None]), max_size=3),
    ),
    guidance=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)),
    steps=st.integers(-2, 60),
)
def test_generate_refuses_by_name_or_returns_finite_images(small_model, prompts, guidance, steps):
    generator = torch.Generator().manual_seed(0)
    try:
        images = generate(small_model, prompts, guidance, steps, generator)
    except (TypeError, ValueError) as error:
        assert str(error).split()[0].split("[")[0] in {"prompts", "guidance", "steps"}, error
        return
    assert images.shape == (len(prompts), 1, 8, 8) and bool(torch.isfinite(images).all())
