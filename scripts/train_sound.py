"""Train the spoken-digit models of the sound chapter and write their checkpoints.

    python scripts/train_sound.py classifier  # -> spoken_digits_classifier.safetensors
    python scripts/train_sound.py denoiser    # -> spoken_digits_denoiser.safetensors

(written into ``diffusion_core/weights/``, where the package ships them).

The classifier (the judge) learns the twenty words from the clips of the judge's voices
(``diffusion_core.audio.JUDGE_VOICES``), with the settings of ``CLASSIFIER_SETTINGS``. The
denoiser (``diffusion_core.audio.SOUND_MODEL``) learns the clips of the other voices,
conditioned on word and pitch level, with label dropout for classifier-free guidance. Both
runs are deterministic: everything is seeded and runs on one CPU thread, so the same settings
give the same weights on a given machine and torch version. ``--steps`` shortens a run.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

from diffusion_core import audio, checkpoints
from diffusion_core.device import seed_everything
from diffusion_core.train import train, training_record

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = {"classifier": "spoken_digits_classifier", "denoiser": "spoken_digits_denoiser"}


def default_path(which: str) -> pathlib.Path:
    return ROOT / "diffusion_core" / "weights" / f"{NAMES[which]}.safetensors"


def train_judge(steps: int | None = None) -> dict:
    """The classifier's checkpoint: weights, settings and its accuracy on the other voices."""
    data = audio.load_spoken_digits()
    judge_clips, heard = data.voices(audio.JUDGE_VOICES), data.voices(audio.MODEL_VOICES)
    start = time.perf_counter()
    steps = audio.CLASSIFIER_SETTINGS["steps"] if steps is None else steps
    classifier = audio.train_classifier(judge_clips.features, judge_clips.word, steps=steps)
    return {
        "settings": {**audio.CLASSIFIER_SETTINGS, "steps": steps},
        "voices": list(audio.JUDGE_VOICES),
        "held_out_accuracy": audio.word_accuracy(classifier, heard.features, heard.word),
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch_version": str(torch.__version__),
        "weights": classifier.state_dict(),
    }


def train_denoiser(steps: int | None = None, progress: bool = False) -> dict:
    """The denoiser's checkpoint: EMA weights, settings, losses, training time."""
    spec = audio.SOUND_MODEL
    settings = dict(spec["train"])
    if steps is not None:
        settings["steps"] = steps
    objective, config = audio.sound_recipe(settings)
    seed_everything(spec["init_seed"])  # one thread; the initial weights come from this seed
    net = audio.build_sound_net(spec["net"])
    data = audio.load_spoken_digits().voices(audio.MODEL_VOICES)
    labels = audio.condition_label(data.word, data.pitch)
    start, cpu_start = time.perf_counter(), time.process_time()
    run = train(
        net, data.features, objective, config, labels=labels, progress=progress, device="cpu"
    )
    return {
        "net": spec["net"],
        "train": settings,
        "init_seed": spec["init_seed"],
        "schedule": {"kind": "linear", "T": 1000},
        "prediction": objective.prediction,
        "voices": list(audio.MODEL_VOICES),
        "train_size": len(data),
        **training_record(run, time.perf_counter() - start, time.process_time() - cpu_start),
        # half precision: half the file, and the samples' scores do not change measurably
        "ema": {name: value.half() for name, value in run.ema.state_dict().items()},
    }


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=sorted(NAMES))
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="checkpoint path")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    path = args.out if args.out is not None else default_path(args.which)
    if args.which == "classifier":
        state = train_judge(args.steps)
        checkpoints.save(path, state, checkpoints.SOUND_CLASSIFIER)
        summary = f"held-out accuracy {state['held_out_accuracy']:.3f}"
    else:
        state = train_denoiser(args.steps, args.progress)
        checkpoints.save(path, state, checkpoints.SOUND_MODEL)
        summary = f"{state['parameters']:,} parameters, {len(state['losses'])} steps"
    print(f"{path}: {summary}, {state['train_seconds']:.0f} s", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
