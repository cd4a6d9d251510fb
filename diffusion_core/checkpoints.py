"""Checkpoints: tensors in safetensors, the rest as JSON in its header, verified when read.

A checkpoint is one `safetensors <https://huggingface.co/docs/safetensors>`_ file: an 8-byte
header length, a JSON header and the raw bytes of the tensors. Reading it parses JSON and copies
bytes, nothing else: unlike a pickle (``torch.save``), a file cannot run code when it is loaded.
The header's metadata records

    format   "diffusion_core.checkpoint", and version :data:`FORMAT_VERSION`
    kind     what the file holds, one of :data:`KINDS` (a training state, a digits model, ...)
    state    the saved state as JSON, each tensor replaced by a reference to it by name
    sha256   SHA-256 of the kind, the state's JSON and every tensor (name, dtype, shape, bytes)

so that :func:`load` can tell a file of another kind, of an older format, truncated or
corrupted from a good one, and say so in one :class:`CheckpointError` (a ``ValueError``) that
names the file. A state is a dict of tensors, dicts, lists, tuples, numbers, strings, bools and
None, nested at will; it comes back equal, tensors bit for bit (and on the CPU), tuples as
tuples, dict keys with their types.

:func:`save` writes atomically: to a temporary file ``.NAME.XXXXXXXX.tmp`` beside the target,
flushed and fsync-ed, then renamed over it with ``os.replace``. The target is the old file or
the new one, never half of one; a temporary file left by a save that was killed is removed by
the next save of the same target (one process writes a given target at a time).

The book's trained models ship inside the package, in ``diffusion_core/weights/``, so that a
chapter finds them wherever it runs (a clone, an installed wheel, a lone notebook on Colab):
:func:`packaged` gives the path of one by name.

Files written by ``torch.save`` (this library's format before, read with
``torch.load(weights_only=True)``) convert once with :func:`convert_torch_checkpoint`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import os
import pathlib
import re
import tempfile

import safetensors
import safetensors.torch
import torch

__all__ = [
    "CONSISTENCY_STUDENTS",
    "DIGITS_CLASSIFIER",
    "DIGITS_MODEL",
    "DIGITS_MODEL_SET",
    "FORMAT",
    "FEWSTEP_STUDENTS",
    "FORMAT_VERSION",
    "KINDS",
    "LATENT_MODEL",
    "SOUND_CLASSIFIER",
    "SOUND_MODEL",
    "TEXT_MODELS",
    "TRAINING_STATE",
    "CheckpointError",
    "convert_torch_checkpoint",
    "load",
    "packaged",
    "save",
]

FORMAT = "diffusion_core.checkpoint"
FORMAT_VERSION = 1
TRAINING_STATE = "training_state"
DIGITS_MODEL = "digits_model"
DIGITS_MODEL_SET = "digits_model_set"
LATENT_MODEL = "latent_model"
DIGITS_CLASSIFIER = "digits_classifier"
FEWSTEP_STUDENTS = "fewstep_students"
CONSISTENCY_STUDENTS = "consistency_students"
SOUND_MODEL = "sound_model"
SOUND_CLASSIFIER = "sound_classifier"
TEXT_MODELS = "text_models"
KINDS = {
    TRAINING_STATE: "a training state (diffusion_core.train.train, resumable)",
    DIGITS_MODEL: "a digits denoiser (scripts/train_digits.py)",
    DIGITS_MODEL_SET: "digits denoisers trained at equal budget (scripts/train_flow.py)",
    LATENT_MODEL: "a latent diffusion model (scripts/train_latent.py)",
    DIGITS_CLASSIFIER: "the digits classifier (diffusion_core.images.digits_classifier)",
    FEWSTEP_STUDENTS: "the distilled students of the 2-D mixture (scripts/train_students.py)",
    CONSISTENCY_STUDENTS: "the consistency models of Chapter 8 (scripts/train_students.py)",
    SOUND_MODEL: "the spoken-digit spectrogram denoiser (scripts/train_sound.py)",
    SOUND_CLASSIFIER: "the spoken-digit classifier (scripts/train_sound.py)",
    TEXT_MODELS: "the token diffusion and autoregressive models (scripts/train_text.py)",
}
"""The kinds of checkpoint, each with what it holds (used in error messages)."""

_TENSOR, _TUPLE, _PAIRS = "__tensor__", "__tuple__", "__pairs__"  # tags of the state's JSON
_PLAIN = (bool, int, float, str, type(None))
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"  # torch.save: a zip archive, or a raw pickle


def packaged(name: str) -> pathlib.Path:
    """The path of the trained checkpoint ``name`` that ships with the library
    (``diffusion_core/weights/NAME.safetensors``, written by the scripts in ``scripts/``).

    Found through :mod:`importlib.resources`, so it works from a clone, an installed wheel or a
    notebook copied alone into an empty folder. Raises ``ValueError`` naming the available
    checkpoints when there is none called ``name``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    weights = importlib.resources.files("diffusion_core") / "weights"
    available = sorted(
        entry.name.removesuffix(".safetensors")
        for entry in weights.iterdir()
        if entry.name.endswith(".safetensors")
    )
    if name not in available:
        raise ValueError(f"name must be one of the packaged checkpoints {available}, got {name!r}")
    return pathlib.Path(str(weights / f"{name}.safetensors"))


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of the kind asked for (the message says why)."""


def save(path: str | os.PathLike, state: dict, kind: str) -> None:
    """Write ``state`` (a dict, see the module docstring) as a checkpoint of ``kind`` at ``path``,
    atomically; first remove temporary files of ``path`` left by an interrupted save."""
    path = _check_path("path", path)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    _check_kind(kind)
    tensors: dict[str, torch.Tensor] = {}
    metadata = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "kind": kind,
        "state": json.dumps(_pack(state, tensors, "state")),
    }
    metadata["sha256"] = _digest(metadata, tensors)
    _write_atomically(path, safetensors.torch.save(tensors, metadata=metadata))


def load(path: str | os.PathLike, kind: str) -> dict:
    """The state saved by :func:`save` at ``path``, tensors on the CPU.

    Raises :class:`CheckpointError` (a ``ValueError`` naming the file) if the file is empty,
    truncated or corrupted (its SHA-256 differs from the one recorded), written by
    ``torch.save``, of another format or version, or a checkpoint of another kind;
    ``FileNotFoundError`` if there is no such file.
    """
    path = _check_path("path", path)
    _check_kind(kind)
    with open(path, "rb") as file:
        raw = file.read()
    metadata, tensors = _parse(path, raw)
    if metadata.get("sha256") != _digest(metadata, tensors):
        raise CheckpointError(
            f"{path} is corrupted: its contents do not match the SHA-256 recorded when it was "
            "written (a damaged copy or an edited file); use another copy or write it again"
        )
    if metadata.get("kind") != kind:
        found = KINDS.get(metadata.get("kind"), repr(metadata.get("kind")))
        raise CheckpointError(f"{path} holds {found}, not {KINDS[kind]}")
    try:
        return _unpack(json.loads(metadata["state"]), tensors)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{path} has a malformed state record ({err!r})") from None


def convert_torch_checkpoint(
    source: str | os.PathLike, target: str | os.PathLike, kind: str
) -> None:
    """Rewrite a checkpoint that ``torch.save`` wrote (this library's earlier format) as a
    checkpoint of ``kind`` at ``target``; tensors are copied bit for bit.

    ``source`` is read with ``torch.load(weights_only=True)``, which refuses any pickled code,
    so convert only files of a source you trust. Its ``"format"`` entry is dropped (the new file
    records its own format); a training state's list of losses becomes a float64 tensor, as
    :func:`diffusion_core.train.train` now writes it.
    """
    source = _check_path("source", source)
    _check_kind(kind)
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} holds a {type(state).__name__}, not a dict of state")
    state = {name: value for name, value in state.items() if name != "format"}
    if kind == TRAINING_STATE and isinstance(state.get("losses"), list):
        state["losses"] = torch.tensor(state["losses"], dtype=torch.float64)
    save(target, state, kind)


# --- the state as JSON and named tensors -----------------------------------------------------


def _pack(value, tensors: dict, where: str):
    """``value`` as JSON data; each tensor goes to ``tensors`` under its path in the state."""
    if isinstance(value, torch.Tensor):
        name = where if where not in tensors else f"{where}#{len(tensors)}"
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: name}
    if isinstance(value, float | int | str | bool | type(None)):
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [_pack(item, tensors, f"{where}/{i}") for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_pack(item, tensors, f"{where}/{i}") for i, item in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value) and not {_TENSOR, _TUPLE, _PAIRS} & set(
            value
        ):
            return {key: _pack(item, tensors, f"{where}/{key}") for key, item in value.items()}
        pairs = []
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                raise TypeError(f"{where} has a key of type {type(key).__name__}, not saveable")
            pairs.append([key, _pack(item, tensors, f"{where}/{key}")])
        return {_PAIRS: pairs}
    raise TypeError(
        f"{where} is a {type(value).__name__}; a checkpoint holds tensors, dicts, lists, "
        "tuples, numbers, strings, bools and None"
    )


def _unpack(value, tensors: dict):
    if isinstance(value, list):
        return [_unpack(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value:
        return tensors[value[_TENSOR]]
    if _TUPLE in value:
        return tuple(_unpack(item, tensors) for item in value[_TUPLE])
    if _PAIRS in value:
        return {key: _unpack(item, tensors) for key, item in value[_PAIRS]}
    return {key: _unpack(item, tensors) for key, item in value.items()}


def _digest(metadata: dict, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the metadata (but the digest itself) and of every tensor: its name, dtype,
    shape and bytes, in the order of the names."""
    record = {key: value for key, value in metadata.items() if key != "sha256"}
    names = sorted(tensors)
    layout = [[name, str(tensors[name].dtype), list(tensors[name].shape)] for name in names]
    digest = hashlib.sha256(json.dumps([record, layout], sort_keys=True).encode())
    for name in names:
        digest.update(tensors[name].reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _parse(path: str, raw: bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and the tensors of the file's bytes ``raw``, or a CheckpointError."""
    if not raw:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        tensors = safetensors.torch.load(raw)
        size = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + size]).get("__metadata__") or {}
    except (safetensors.SafetensorError, ValueError, AttributeError) as err:
        if raw.startswith(_ZIP_MAGIC) or raw.startswith(_PICKLE_MAGIC):
            raise CheckpointError(
                f"{path} was written by torch.save, the checkpoint format before {FORMAT} "
                f"version {FORMAT_VERSION}; convert it once with "
                "diffusion_core.checkpoints.convert_torch_checkpoint, or train it again"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint, it is truncated or corrupted ({err})"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file, but not a {FORMAT} file")
    if metadata.get("version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has format version {metadata.get('version')!r}; this library reads "
            f"version {FORMAT_VERSION}"
        )
    return metadata, tensors


# --- files -----------------------------------------------------------------------------------


def _write_atomically(path: str, data: bytes) -> None:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(directory, name)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide it from others
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def _remove_stale_temporaries(directory: str, name: str) -> None:
    """Remove ``.NAME.XXXXXXXX.tmp`` files (tempfile's 8 random characters), which only a save
    of this target that was killed before its rename leaves behind."""
    pattern = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")
    for entry in os.listdir(directory):
        if pattern.fullmatch(entry):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _check_path(name: str, path) -> str:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return os.path.abspath(os.fspath(path))


def _check_kind(kind) -> None:
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
