"""Tests of diffusion_core.checkpoints: round trips, bit-exact resume, and every damaged or
foreign file refused with one ValueError that names the file."""

import json
import os
import pathlib
import random

import pytest
import safetensors.torch
import torch

from diffusion_core import checkpoints
from diffusion_core.checkpoints import CheckpointError
from diffusion_core.losses import DiffusionLoss
from diffusion_core.nets import MLPDenoiser
from diffusion_core.schedules import linear_schedule
from diffusion_core.train import RunConfig, TrainConfig, load_checkpoint, save_checkpoint, train


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return MLPDenoiser(hidden=16, depth=1, time_dim=8)


def tiny_config(steps):
    return TrainConfig(steps=steps, batch_size=16, lr=3e-3, ema_decay=0.9, seed=3)


@pytest.fixture(scope="module")
def data():
    return torch.randn(128, 2, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def objective():
    return DiffusionLoss(linear_schedule(50))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, objective):
    """A real training state written by the loop, and its bytes."""
    path = tmp_path_factory.mktemp("trained") / "run.safetensors"
    train(tiny_net(), data, objective, tiny_config(6), run=RunConfig(checkpoint_path=path))
    return path, path.read_bytes()


def same(a, b) -> bool:
    """Equal, with tensors equal bit for bit (dtype and shape too) and containers of one type."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and (a.dtype, a.shape) == (b.dtype, b.shape)
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and (a == b or a != a and b != b)


def test_round_trip_keeps_every_value_and_type(tmp_path):
    state = {
        "weights": {"w": torch.randn(3, 4), "b": torch.zeros(0, 2), "half": torch.ones(2).half()},
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "generator": torch.Generator().manual_seed(5).get_state(),
        "flags": torch.tensor([True, False]),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "groups": [{"betas": (0.9, 1)}]},
        "numbers": [1, 2.5, 1e-300, float("inf"), -0.0, 2**70, True, None, "text"],
        "__tensor__": "a key that looks like a tag",
    }
    path = tmp_path / "state.safetensors"
    checkpoints.save(path, state, "training_state")
    assert same(checkpoints.load(path, "training_state"), state)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # readable like any file written


def test_save_refuses_values_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match=r"state/bad is a set; a checkpoint holds tensors"):
        checkpoints.save(tmp_path / "x", {"bad": {1, 2}}, "training_state")
    with pytest.raises(TypeError, match="state must be a dict, got list"):
        checkpoints.save(tmp_path / "x", [torch.ones(1)], "training_state")
    with pytest.raises(ValueError, match=r"kind must be one of \('training_state'"):
        checkpoints.save(tmp_path / "x", {}, "weights")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        checkpoints.load(3, "training_state")
    assert os.listdir(tmp_path) == []


def test_resume_from_a_checkpoint_is_bit_exact(tmp_path, data, objective):
    straight_net = tiny_net()
    straight = train(straight_net, data, objective, tiny_config(12))
    path = tmp_path / "half.safetensors"
    train(tiny_net(), data, objective, tiny_config(6), run=RunConfig(checkpoint_path=path))
    resumed_net = tiny_net(seed=9)
    resumed = train(resumed_net, data, objective, tiny_config(12), resume_from=path)
    assert resumed.losses == straight.losses
    assert same(resumed_net.state_dict(), straight_net.state_dict())
    assert same(resumed.ema.state_dict(), straight.ema.state_dict())


def _data_start(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


def _flip_data(raw: bytes) -> bytes:
    """8 bytes inverted in the middle of the tensor data."""
    middle = (_data_start(raw) + len(raw)) // 2
    return raw[:middle] + bytes(b ^ 0xFF for b in raw[middle : middle + 8]) + raw[middle + 8 :]


def _flip_header(raw: bytes) -> bytes:
    """One character of the JSON record changed (a step number: still valid JSON)."""
    at = raw.index(b'\\"step\\": ') + len(b'\\"step\\": ')
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


def _flip_header_structure(raw: bytes) -> bytes:
    """The header's opening brace changed: the JSON does not parse."""
    return raw[:8] + b"[" + raw[9:]


def _torch_file(raw: bytes, path: pathlib.Path) -> bytes:
    torch.save({"net": torch.ones(3)}, path)
    return path.read_bytes()


FAULTS = {
    "flipped tensor bytes": (_flip_data, "is corrupted: its contents do not match the SHA-256"),
    "flipped header value": (_flip_header, "is corrupted: its contents do not match the SHA-256"),
    "broken header": (_flip_header_structure, "is not a readable checkpoint"),
    "truncated": (lambda raw: raw[: len(raw) * 2 // 3], "is not a readable .* truncated"),
    "empty": (lambda raw: b"", r"is empty \(0 bytes\), not a checkpoint"),
    "one byte": (lambda raw: raw[:1], "is not a readable checkpoint, it is truncated"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_damaged_file_is_refused_by_name(trained, tmp_path, fault):
    damage, message = FAULTS[fault]
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damage(trained[1]))
    with pytest.raises(CheckpointError, match=rf"damaged\.safetensors {message}"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"damaged\.safetensors"):
        train(
            tiny_net(),
            torch.zeros(4, 2),
            DiffusionLoss(linear_schedule(50)),
            tiny_config(9),
            resume_from=path,
        )


def test_a_torch_save_file_is_refused_without_advice_to_unpickle(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 2, "net": torch.ones(3)}, path)
    with pytest.raises(ValueError, match=r"old\.pt was written by torch\.save") as error:
        load_checkpoint(path)
    assert "weights_only=False" not in str(error.value)


def test_a_checkpoint_of_another_kind_is_named_as_such(trained):
    with pytest.raises(
        ValueError,
        match=r"run\.safetensors holds a training state .*, not a "
        "digits denoiser",
    ):
        checkpoints.load(trained[0], "digits_model")


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"foreign\.safetensors is a safetensors file, but not"):
        checkpoints.load(path, "training_state")
    metadata = {"format": checkpoints.FORMAT, "version": "99"}
    safetensors.torch.save_file({"w": torch.ones(2)}, path, metadata=metadata)
    with pytest.raises(ValueError, match=r"foreign\.safetensors has format version '99'"):
        checkpoints.load(path, "training_state")


def test_loading_never_runs_code(tmp_path):
    """A pickle that would create a file when unpickled: refused before any unpickling."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"net": Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.pt was written by torch\.save"):
        checkpoints.load(path, "digits_model")
    assert not marker.exists()
    # and the JSON record is only ever data: a string that reads like code stays a string
    checkpoints.save(path, {"code": "__import__('os').remove('x')"}, "digits_model")
    assert checkpoints.load(path, "digits_model") == {"code": "__import__('os').remove('x')"}


def test_a_killed_save_leaves_a_temporary_file_that_the_next_save_removes(tmp_path):
    path = tmp_path / "run.safetensors"
    stale = tmp_path / ".run.safetensors.k1ll3d_x.tmp"  # what a save killed before its rename
    others = [tmp_path / ".run.safetensors.b.abcdefgh.tmp", tmp_path / ".other.abcdefgh.tmp"]
    for file in [stale, *others]:
        file.write_bytes(b"half a checkpoint")
    save_checkpoint(path, {"step": 1})
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, *(f.name for f in others)])
    assert load_checkpoint(path) == {"step": 1}


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.safetensors"
    save_checkpoint(path, {"step": 1})

    def failing_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [path.name] and load_checkpoint(path) == {"step": 1}


def test_converted_torch_checkpoint_is_bit_identical(tmp_path):
    state = {"format": 2, "step": 3, "losses": [0.5, 0.25, 1 / 3], "net": {"w": torch.randn(4)}}
    torch.save(state, tmp_path / "old.pt")
    checkpoints.convert_torch_checkpoint(tmp_path / "old.pt", tmp_path / "new", "training_state")
    converted = load_checkpoint(tmp_path / "new")
    assert converted["losses"].tolist() == state["losses"]
    assert same(converted["net"], state["net"]) and "format" not in converted


def test_random_single_byte_changes_are_caught_or_harmless(trained, tmp_path):
    """Every changed byte is refused, unless what loads is still exactly what was written (a
    space of the header's padding turned into another JSON space, say)."""
    raw, original = trained[1], load_checkpoint(trained[0])
    rng = random.Random(0)
    path = tmp_path / "flipped.safetensors"
    for _ in range(30):
        at = rng.randrange(len(raw))
        path.write_bytes(raw[:at] + bytes([raw[at] ^ rng.randrange(1, 256)]) + raw[at + 1 :])
        try:
            loaded = load_checkpoint(path)
        except ValueError as error:
            assert "flipped.safetensors" in str(error)
        else:
            assert same(loaded, original), at


def test_header_records_kind_version_and_digest(trained):
    raw = trained[1]
    header = json.loads(raw[8 : _data_start(raw)])["__metadata__"]
    assert header["format"] == checkpoints.FORMAT and header["version"] == "1"
    assert header["kind"] == "training_state" and len(header["sha256"]) == 64
    assert json.loads(header["state"])["step"] == 6
