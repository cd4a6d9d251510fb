"""Tests for :mod:`diffusion_core.train`: reproducibility, resuming, checkpoints, the configs,
the learning-rate schedule, divergence.

Runs are tiny (a 16-unit MLP, tens of steps) so that bitwise comparisons stay cheap; equality is
exact (``==`` on the loss lists, ``torch.equal`` on the weights), not a tolerance. The fixture
``schedule`` is the diffusion objective on a 100-step linear schedule (the name the loop's
third argument had before it took objectives).
"""

import math
import os
import re

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffusion_core.train as train_module
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.losses import DiffusionLoss, Objective
from diffusion_core.nets import MLPDenoiser
from diffusion_core.schedules import linear_schedule
from diffusion_core.train import (
    RunConfig,
    TrainConfig,
    ema_decay_at,
    learning_rate_at,
    load_checkpoint,
    save_checkpoint,
    train,
    training_record,
    update_ema,
)


@pytest.fixture(scope="module")
def data():
    return default_mixture_2d().sample(512, torch.Generator().manual_seed(0)).float()


@pytest.fixture(scope="module")
def schedule():
    return DiffusionLoss(linear_schedule(100))


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return MLPDenoiser(hidden=16, depth=1, time_dim=8)


def tiny_config(**changes):
    settings = {"steps": 30, "batch_size": 32, "lr": 3e-3, "ema_decay": 0.9, "seed": 1}
    return TrainConfig(**(settings | changes))


def assert_same_weights(first, second):
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_same_seed_gives_the_same_loss_curve(data, schedule):
    net_a, net_b = tiny_net(), tiny_net()
    run_a = train(net_a, data, schedule, tiny_config(), progress=False)
    run_b = train(net_b, data, schedule, tiny_config(), progress=False)
    assert len(run_a.losses) == 30 and run_a.step == 30
    assert all(isinstance(loss, float) for loss in run_a.losses)
    assert run_a.losses == run_b.losses
    assert_same_weights(net_a, net_b)
    assert_same_weights(run_a.ema, run_b.ema)


def test_different_seed_gives_a_different_curve(data, schedule):
    run_a = train(tiny_net(), data, schedule, tiny_config(steps=5), progress=False)
    run_b = train(tiny_net(), data, schedule, tiny_config(steps=5, seed=2), progress=False)
    assert run_a.losses != run_b.losses


class Interrupted(Exception):
    """Stands for a crash of the run right after a checkpoint was written."""


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_resumed_run_equals_the_uninterrupted_run(data, tmp_path, monkeypatch, lr_schedule):
    objective = DiffusionLoss(linear_schedule(100), prediction="v", weighting="min_snr")
    settings = {"grad_clip": 0.5, "weight_decay": 0.01, "lr_schedule": lr_schedule}
    straight_net = tiny_net()
    straight = train(straight_net, data, objective, tiny_config(steps=40, **settings))

    # A constant-lr run may be extended: 20 steps, then resumed to 40. The cosine decays over
    # config.steps, so a cosine run is resumed with its own steps: it crashes after step 20.
    path = tmp_path / "run.pt"
    first = tiny_config(steps=20 if lr_schedule == "constant" else 40, **settings)

    def save_then_crash(where, state):
        save_checkpoint(where, state)
        raise Interrupted("crashed right after the checkpoint")

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(Interrupted, match="crashed right after the checkpoint"):
        run = RunConfig(checkpoint_every=20, checkpoint_path=path)
        train(tiny_net(), data, objective, first, run=run, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 20

    resumed_net = tiny_net(seed=99)  # its initial weights are replaced by the checkpoint's
    second = tiny_config(steps=40, **settings)
    run = RunConfig(checkpoint_path=tmp_path / "resumed.pt")
    resumed = train(resumed_net, data, objective, second, run=run, resume_from=path)

    assert resumed.step == 40
    assert resumed.losses == straight.losses
    assert_same_weights(resumed_net, straight_net)
    assert_same_weights(resumed.ema, straight.ema)
    assert load_checkpoint(tmp_path / "resumed.pt")["step"] == 40


def test_resume_rejects_changed_settings(data, schedule, tmp_path):
    path = tmp_path / "run.pt"
    run = RunConfig(checkpoint_path=path)
    train(tiny_net(), data, schedule, tiny_config(steps=5), run=run, progress=False)
    with pytest.raises(ValueError, match="lr=0.003, but config has lr=0.001"):
        train(tiny_net(), data, schedule, tiny_config(lr=1e-3), resume_from=path)
    with pytest.raises(ValueError, match="past config.steps"):
        train(tiny_net(), data, schedule, tiny_config(steps=3), resume_from=path)
    other = DiffusionLoss(linear_schedule(100), prediction="x0")
    with pytest.raises(ValueError, match="prediction='eps', but objective has prediction='x0'"):
        train(tiny_net(), data, other, tiny_config(), resume_from=path)
    with pytest.raises(ValueError, match="lr_schedule='constant', but config has"):
        train(tiny_net(), data, schedule, tiny_config(lr_schedule="cosine"), resume_from=path)


def test_checkpoints_are_written_every_n_steps_and_at_the_end(
    data, schedule, tmp_path, monkeypatch
):
    written = []
    monkeypatch.setattr(train_module, "save_checkpoint", lambda p, s: written.append(s["step"]))
    run = RunConfig(checkpoint_every=10, checkpoint_path=tmp_path / "c.pt")
    train(tiny_net(), data, schedule, tiny_config(steps=25), run=run, progress=False)
    assert written == [10, 20, 25]


def test_checkpoint_is_a_safetensors_training_state(data, schedule, tmp_path):
    path = tmp_path / "run.safetensors"
    config, run_config = tiny_config(), RunConfig(checkpoint_path=path)
    run = train(tiny_net(), data, schedule, config, run=run_config, progress=False)
    state = load_checkpoint(path)
    assert state["step"] == 30 and state["losses"].tolist() == run.losses
    assert state["losses"].dtype == torch.float64
    assert set(safetensors.torch.load_file(path)) >= {"state/net/input.weight", "state/losses"}
    assert set(state) >= {"net", "ema", "optimizer", "generators", "step", "losses"}
    for generator_state in state["generators"].values():
        assert generator_state.dtype == torch.uint8
    assert_same_weights(run.ema, _with_state(tiny_net(), state["ema"]))


def _with_state(net, state_dict):
    net.load_state_dict(state_dict)
    return net


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.arange(4.0)})
    assert os.listdir(tmp_path) == ["state.pt"]  # no temporary file left behind

    def failing_fsync(handle):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(4)})
    monkeypatch.undo()

    assert os.listdir(tmp_path) == ["state.pt"]
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(4.0))


def test_loss_decreases_on_a_2d_mixture(schedule):
    data = default_mixture_2d().sample(4096, torch.Generator().manual_seed(1)).float()
    torch.manual_seed(0)
    net = MLPDenoiser(hidden=32, depth=2, time_dim=16)
    config = TrainConfig(steps=300, batch_size=128, lr=3e-3)
    losses = train(net, data, DiffusionLoss(linear_schedule(1000)), config).losses
    first, last = sum(losses[:50]) / 50, sum(losses[-50:]) / 50
    assert last < 0.8 * first


def test_ema_follows_the_net_without_decay_and_warms_up(data, schedule):
    net = tiny_net()
    run = train(net, data, schedule, tiny_config(steps=5, ema_decay=0.0), progress=False)
    assert_same_weights(run.ema, net)
    assert run.ema is not net
    assert not any(p.requires_grad for p in run.ema.parameters())
    assert ema_decay_at(0.999, 1) == 2 / 11
    assert ema_decay_at(0.999, 8) == 0.5
    assert ema_decay_at(0.999, 10**6) == 0.999


def test_losses_are_read_back_every_log_every_steps_not_every_step(data, schedule, monkeypatch):
    # Count the reads of tensor values that the loop itself makes (the optimizer's own reads
    # of its CPU step counters are not the loop's and do not count).
    import sys

    reads = []
    for method in ("item", "tolist", "__float__", "__bool__", "cpu"):
        original = getattr(torch.Tensor, method)

        def counting(tensor, *args, _original=original, _method=method, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith("diffusion_core/train.py"):
                reads.append(_method)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)
    run = RunConfig(log_every=5)
    run = train(tiny_net(), data, schedule, tiny_config(steps=12), run=run, progress=False)
    # the losses after steps 5, 10 and 12, then one check that the final weights are finite
    assert reads == ["tolist"] * 3 + ["__bool__"]
    assert len(run.losses) == 12 and all(isinstance(value, float) for value in run.losses)


def test_nothing_is_printed_unless_asked(data, schedule, capfd, monkeypatch):
    train(tiny_net(), data, schedule, tiny_config(steps=3), progress=False)
    monkeypatch.setenv("DIFFUSION_PROGRESS", "0")
    train(tiny_net(), data, schedule, tiny_config(steps=3))
    assert capfd.readouterr() == ("", "")
    train(tiny_net(), data, schedule, tiny_config(steps=3), progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "3/3" in err


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"steps": 0}, ValueError, "steps must be in 1"),
        ({"steps": 2.5}, TypeError, "steps must be an int"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"lr": 0.0}, ValueError, r"lr must be a finite number in \(0, inf\)"),
        ({"lr": -1e-3}, ValueError, "lr"),
        ({"lr": math.nan}, ValueError, r"lr must be a finite number in \(0, inf\), got nan"),
        ({"lr": math.inf}, ValueError, r"lr must be a finite number in \(0, inf\), got inf"),
        ({"lr": "1e-3"}, TypeError, "lr must be a number"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"lr_schedule": "step"}, ValueError, "lr_schedule must be one of"),
        ({"ema_decay": 1.0}, ValueError, r"ema_decay must be a finite number in \[0, 1\)"),
        ({"ema_decay": -0.5}, ValueError, "ema_decay"),
        ({"grad_clip": 0.0}, ValueError, "grad_clip"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**64}, ValueError, "seed must be in 0..18446744073709551615"),
        ({"shared_generator": 1}, TypeError, "shared_generator must be True or False"),
    ],
)
def test_bad_config_values_raise(changes, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"log_every": 0}, ValueError, "log_every"),
        ({"checkpoint_every": 5}, ValueError, "checkpoint_path"),
        ({"checkpoint_path": 3}, TypeError, "checkpoint_path"),
        ({"mixed_precision": 1}, TypeError, "mixed_precision must be True or False"),
    ],
)
def test_bad_run_config_values_raise(changes, error, message):
    with pytest.raises(error, match=message):
        RunConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"prediction": "score"}, ValueError, "prediction must be one of"),
        ({"weighting": "p2"}, ValueError, "weighting must be one of"),
        ({"min_snr_gamma": 0}, ValueError, "min_snr_gamma"),
        ({"label_dropout": 0.1}, ValueError, "null_label"),
        ({"label_dropout": 1.0, "null_label": 3}, ValueError, "label_dropout"),
        ({"null_label": -1}, ValueError, "null_label"),
    ],
)
def test_bad_objective_values_raise(changes, error, message):
    with pytest.raises(error, match=message):
        DiffusionLoss(linear_schedule(10), **changes)
    with pytest.raises(TypeError, match="schedule must be"):
        DiffusionLoss("linear")


def test_bad_train_arguments_raise(data, schedule):
    net, config = tiny_net(), tiny_config(steps=1)
    with pytest.raises(TypeError, match="net must be"):
        train(lambda x, t: x, data, schedule, config)
    with pytest.raises(TypeError, match="data must be a floating-point"):
        train(net, data.long(), schedule, config)
    with pytest.raises(ValueError, match="data must have shape"):
        train(net, data[:, 0], schedule, config)
    with pytest.raises(ValueError, match=r"data must have shape \(N, ...\) with N >= 1"):
        train(net, data[:0], schedule, config)
    with pytest.raises(ValueError, match="data must be finite"):
        train(net, data * math.nan, schedule, config)
    with pytest.raises(TypeError, match="objective must be an Objective"):
        train(net, data, linear_schedule(100), config)
    with pytest.raises(TypeError, match="config must be"):
        train(net, data, schedule, {"steps": 1})
    with pytest.raises(TypeError, match="run must be a RunConfig"):
        train(net, data, schedule, config, run={"log_every": 1})
    with pytest.raises(ValueError, match=r"labels must have shape \(512,\)"):
        train(net, data, schedule, config, labels=torch.arange(511))
    with pytest.raises(TypeError, match="labels must hold integers"):
        train(net, data, schedule, config, labels=torch.ones(512))
    with pytest.raises(TypeError, match="progress must be"):
        train(net, data, schedule, config, progress="yes")
    with pytest.raises(ValueError, match="device"):
        train(net, data, schedule, config, progress=False, device="tpu")


def test_a_diverging_run_stops_before_writing_a_checkpoint(data, tmp_path):
    """lr = 1e30 overflows the weights within a step or two: the loss turns inf or NaN, and the
    run must stop at the next read-back rather than save those weights."""
    path = tmp_path / "run.pt"
    run = RunConfig(log_every=5, checkpoint_every=5, checkpoint_path=path)
    with pytest.raises(FloatingPointError, match=r"training diverged: the loss of step \d+ is"):
        train(tiny_net(), data, DiffusionLoss(linear_schedule(100)), tiny_config(lr=1e30), run=run)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_cosine_learning_rate_falls_from_lr_towards_zero():
    config = tiny_config(steps=4, lr=0.2, lr_schedule="cosine")
    rates = [learning_rate_at(config, step) for step in range(4)]
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert rates == expected and rates[0] == 0.2
    assert [learning_rate_at(tiny_config(lr=0.2), k) for k in range(3)] == [0.2] * 3


def test_the_optimizer_steps_with_the_scheduled_rate(data, schedule, monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def recording_step(optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    config = tiny_config(steps=5, lr_schedule="cosine")
    train(tiny_net(), data, schedule, config, progress=False)
    assert seen == [learning_rate_at(config, k) for k in range(5)]


def test_without_ema_decay_there_is_no_ema(data, schedule):
    net = tiny_net()
    run = train(net, data, schedule, tiny_config(steps=3, ema_decay=None))
    assert run.ema is None and run.net is net and run.step == 3


class GeneratorSpy(Objective):
    """A least-squares objective that records the generators the loop hands it."""

    def __init__(self):
        self.seen = []

    def condition(self, labels, generator):
        self.seen.append(("condition", generator))
        return labels

    def __call__(self, net, batch, labels, generator):
        self.seen.append(("loss", generator))
        noise = torch.randn(batch.shape, generator=generator)
        return (net(batch + noise, torch.ones(len(batch), dtype=torch.long)) - batch).square()


@pytest.mark.parametrize("shared", [False, True])
def test_minibatches_and_noise_come_from_one_or_two_generators(data, shared):
    spy = GeneratorSpy()
    train(tiny_net(), data, spy, tiny_config(steps=2, shared_generator=shared))
    (_, data_generator), (_, noise_generator) = spy.seen[:2]
    assert (data_generator is noise_generator) == shared
    if shared:  # one generator seeded with the seed itself: the first draw is the minibatch
        index = torch.randint(512, (32,), generator=torch.Generator().manual_seed(1))
        again = torch.Generator().manual_seed(1)
        assert torch.equal(torch.randint(512, (32,), generator=again), index)


@pytest.mark.slow
def test_trained_mlp_samples_the_mixture_at_the_noise_floor():
    """The book's recipe end to end: 2000 steps of the default MLP on the 2-D mixture, then 50
    DDIM steps. Measured here: sliced W2 0.17 against a floor of 0.16 at 2000 samples (training
    takes 10-20 s on one core); a net trained for one step gives about 110, so the bound of
    1.5x the floor separates trained from untrained by orders of magnitude."""
    from diffusion_core import metrics, samplers
    from diffusion_core.parameterization import as_denoiser

    mixture = default_mixture_2d()
    data = mixture.sample(20_000, torch.Generator().manual_seed(3)).float()
    torch.manual_seed(1)
    net = MLPDenoiser()
    config = TrainConfig(steps=2000, batch_size=256, lr=2e-3, ema_decay=0.995, seed=1)
    run = train(net, data, DiffusionLoss(linear_schedule()), config, progress=False)
    grid = linear_schedule().grid(50)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        x = samplers.prior_sample(grid, (2000, 2), generator)
        out = samplers.ddim(as_denoiser(run.ema, "eps"), x, grid)
    distance = metrics.sliced_wasserstein(out, mixture.sample(2000, generator))
    floor = metrics.sliced_wasserstein_floor(mixture.sample, 2000, generator=generator, repeats=20)
    assert distance < 1.5 * floor, (distance, floor)


# --- input checks of the loop, the EMA and the configs -------------------------------------


@pytest.mark.parametrize("decay", [float("nan"), float("inf"), -0.1, 5.0])
def test_update_ema_refuses_a_decay_outside_0_1(decay):
    ema, net = tiny_net(), tiny_net(seed=1)
    before = [p.clone() for p in ema.parameters()]
    with pytest.raises(ValueError, match=r"decay must be a finite number in \[0, 1\]"):
        update_ema(ema, net, decay)
    assert all(torch.equal(a, b) for a, b in zip(before, ema.parameters(), strict=True))
    with pytest.raises(TypeError, match="decay must be a number, got str"):
        update_ema(ema, net, "0.9")
    with pytest.raises(TypeError, match="ema must be a torch.nn.Module, got dict"):
        update_ema({}, net, 0.9)


def test_update_ema_ends_of_the_range():
    ema, net = tiny_net(), tiny_net(seed=1)
    update_ema(ema, net, 1.0)
    assert all(
        torch.equal(a, b) for a, b in zip(ema.parameters(), tiny_net().parameters(), strict=True)
    )
    update_ema(ema, net, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), net.parameters(), strict=True))


def test_a_diverging_run_names_its_first_bad_step_and_the_cause(data, tmp_path):
    """lr = 1e4 without clipping: the first non-finite loss is named, with the lr, and no
    checkpoint is written at or after it."""
    path = tmp_path / "run.safetensors"
    run = RunConfig(log_every=1000, checkpoint_every=1, checkpoint_path=path)
    config = tiny_config(lr=1e4, grad_clip=None, steps=40)
    torch.manual_seed(0)
    net = MLPDenoiser(hidden=64, depth=2, time_dim=16)
    with pytest.raises(FloatingPointError, match=r"training diverged: .* step (\d+)") as error:
        train(net, data, DiffusionLoss(linear_schedule(100)), config, run=run)
    message = str(error.value)
    assert "lr=10000" in message and "no gradient clipping" in message
    assert "weights_only" not in message
    bad_step = int(re.search(r"step (\d+)", message).group(1))
    if path.exists():  # the checkpoints before the divergence are finite, the last one too
        saved = load_checkpoint(path)
        assert saved["step"] < bad_step
        assert all(bool(torch.isfinite(t).all()) for t in saved["net"].values())
        assert bool(torch.isfinite(saved["losses"]).all())


def test_weights_that_overflow_after_a_finite_loss_are_never_saved(data, tmp_path, monkeypatch):
    """A step whose loss was finite can still leave non-finite weights: the checkpoint after it
    is refused, naming that step."""
    path = tmp_path / "run.safetensors"
    original = train_module._step

    def poisoning_step(model, data, labels, objective, config, run, state):
        loss = original(model, data, labels, objective, config, run, state)
        if state.step == 3:
            with torch.no_grad():
                next(state.net.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(train_module, "_step", poisoning_step)
    run = RunConfig(checkpoint_every=3, checkpoint_path=path)
    with pytest.raises(FloatingPointError, match="weights are not finite after step 3"):
        train(tiny_net(), data, DiffusionLoss(linear_schedule(100)), tiny_config(), run=run)
    assert not path.exists()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"lr": float("inf")}, ValueError, r"lr must be a finite number in \(0, inf\)"),
        ({"lr": float("nan")}, ValueError, "lr must be a finite number"),
        ({"lr": 0.0}, ValueError, "lr must be a finite number"),
        ({"lr": "1e-3"}, TypeError, "lr must be a number"),
        ({"steps": 0}, ValueError, r"steps must be in 1\.\.(100000000)?, got 0"),
        ({"steps": 10**9}, ValueError, r"steps must be in 1\.\.100000000, got 1000000000"),
        ({"steps": 2.0}, TypeError, "steps must be an int"),
        ({"batch_size": 2**21}, ValueError, r"batch_size must be in 1\.\.1048576"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be a finite number"),
        ({"weight_decay": float("inf")}, ValueError, "weight_decay must be a finite number"),
        ({"grad_clip": float("nan")}, ValueError, "grad_clip must be a finite number"),
        ({"ema_decay": 1.0}, ValueError, r"ema_decay must be a finite number in \[0, 1\)"),
        ({"ema_decay": float("nan")}, ValueError, "ema_decay must be a finite number"),
        ({"lr_schedule": ["cosine"]}, ValueError, "lr_schedule must be one of"),
        ({"seed": -1}, ValueError, "seed must be in 0"),
        ({"shared_generator": 1}, TypeError, "shared_generator must be True or False"),
    ],
)
def test_train_config_refuses_bad_values_by_name(changes, error, message):
    with pytest.raises(error, match=message):
        tiny_config(**changes)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"log_every": 0}, ValueError, r"log_every must be in 1\.\.(100000000)?, got 0"),
        ({"log_every": 10**9}, ValueError, r"log_every must be in 1\.\.100000000"),
        ({"checkpoint_every": -1}, ValueError, r"checkpoint_every must be in 0\.\.\d*, got -1"),
        ({"checkpoint_every": 10**9}, ValueError, r"checkpoint_every must be in 0\.\.100000000"),
        ({"checkpoint_every": 5}, ValueError, "checkpoint_every > 0 needs a checkpoint_path"),
        ({"checkpoint_path": 3}, TypeError, "checkpoint_path must be a path or None"),
        ({"compile": "no"}, TypeError, "compile must be True or False"),
    ],
)
def test_run_config_refuses_bad_values_by_name(changes, error, message):
    with pytest.raises(error, match=message):
        RunConfig(**changes)


def test_resume_from_must_be_a_path(data, schedule):
    with pytest.raises(TypeError, match="resume_from must be a path"):
        train(tiny_net(), data, schedule, tiny_config(), resume_from=3)


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(lr=NUMBERS, steps=NUMBERS, batch_size=NUMBERS, ema_decay=NUMBERS, grad_clip=NUMBERS)
def test_train_config_either_refuses_by_name_or_holds_valid_values(
    lr, steps, batch_size, ema_decay, grad_clip
):
    fields = {"lr": lr, "steps": steps, "batch_size": batch_size}
    fields |= {"ema_decay": ema_decay, "grad_clip": grad_clip}
    try:
        config = TrainConfig(**fields)
    except (TypeError, ValueError) as error:
        assert any(str(error).startswith(name) for name in fields), str(error)
        return
    assert math.isfinite(config.lr) and config.lr > 0
    assert 1 <= config.steps <= train_module.MAX_STEPS
    assert 1 <= config.batch_size <= train_module.MAX_BATCH_SIZE
    assert config.ema_decay is None or 0 <= config.ema_decay < 1
    assert config.grad_clip is None or (math.isfinite(config.grad_clip) and config.grad_clip > 0)


@settings(max_examples=40, deadline=None)
@given(decay=NUMBERS)
def test_update_ema_either_refuses_the_decay_by_name_or_stays_finite(decay):
    ema, net = tiny_net(), tiny_net(seed=1)
    try:
        update_ema(ema, net, decay)
    except (TypeError, ValueError) as error:
        assert str(error).startswith("decay must be"), str(error)
        return
    assert all(bool(torch.isfinite(p).all()) for p in ema.parameters())


def test_schedules_of_the_loop_refuse_bad_input_by_name():
    with pytest.raises(ValueError, match=r"decay must be a finite number in \[0, 1\]"):
        ema_decay_at(math.nan, 3)
    with pytest.raises(ValueError, match=r"decay must be a finite number in \[0, 1\]"):
        ema_decay_at(1.5, 3)
    with pytest.raises(ValueError, match="step must be in 1"):
        ema_decay_at(0.99, 0)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        learning_rate_at({"lr": 0.1}, 0)
    with pytest.raises(ValueError, match="step must be in 0..3"):
        learning_rate_at(tiny_config(steps=4), 4)


def test_training_record_keeps_what_a_packaged_checkpoint_states(data, schedule):
    run = train(tiny_net(), data, schedule, tiny_config(steps=5), progress=False)
    record = training_record(run, 12.34, 10.06)
    assert record["parameters"] == sum(p.numel() for p in run.net.parameters())
    assert record["losses"].dtype == torch.float32
    assert record["losses"].tolist() == pytest.approx(run.losses, rel=1e-6)
    assert (record["train_seconds"], record["cpu_seconds"]) == (12.3, 10.1)
    assert record["threads"] == torch.get_num_threads()
    assert record["torch_version"] == str(torch.__version__)
    with pytest.raises(TypeError, match="result must be a TrainResult"):
        training_record(run.net, 1.0, 1.0)
    with pytest.raises(ValueError, match="seconds"):
        training_record(run, -1.0, 1.0)
    with pytest.raises(ValueError, match="cpu_seconds"):
        training_record(run, 1.0, math.nan)
