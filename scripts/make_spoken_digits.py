"""Make the spoken-digit data set: espeak-ng speaks the digit words, we keep log-mel spectrograms.

    python scripts/make_spoken_digits.py            # -> diffusion_core/data/spoken_digits.npz

Every combination of language (English ``en-us``, Mandarin ``cmn``), digit word (zero .. nine,
零 .. 九), voice variant, speed and pitch of ``diffusion_core.audio`` is spoken once by
espeak-ng (``espeak-ng -v LANG+VOICE -s SPEED -p PITCH --stdout WORD``), in that order. Each
waveform is resampled to 8 kHz (soxr), trimmed of the silence around it (librosa, 40 dB below
its peak), scaled to a peak of 0.5, placed after 512 samples (64 ms) of silence in a clip of
(FRAMES - 1) * HOP samples (cut if longer) and turned into its log-mel spectrogram
(``diffusion_core.audio.log_mel``), stored as 8-bit steps of 80/255 dB.

Deterministic: espeak-ng is a rule-based synthesiser and nothing here draws random numbers, so
two runs give the same arrays (``tests/test_audio.py`` checks a part of the data against the
stored file where espeak-ng is installed). The file records the espeak-ng version.
"""

from __future__ import annotations

import argparse
import io
import itertools
import pathlib
import subprocess
import sys

import numpy as np

from diffusion_core import audio

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "diffusion_core" / "data" / "spoken_digits.npz"
LEAD = 512  # samples of silence before each word
PEAK = 0.5


def combinations() -> list[tuple[int, int, int, int, int]]:
    """(language, digit, voice, speed index, pitch index) of every clip, in the file's order."""
    return list(
        itertools.product(
            range(len(audio.LANGUAGES)),
            range(10),
            range(len(audio.VOICES)),
            range(len(audio.SPEEDS)),
            range(len(audio.PITCHES)),
        )
    )


def espeak_version() -> str:
    return subprocess.run(
        ["espeak-ng", "--version"], check=True, capture_output=True, text=True
    ).stdout.strip()


def speak(language: int, digit: int, voice: int, speed: int, pitch: int) -> np.ndarray:
    """The waveform espeak-ng speaks for one combination, at its own rate (22050 Hz)."""
    import soundfile

    name = audio.LANGUAGES[language]
    command = [
        "espeak-ng",
        "-v",
        f"{name}+{audio.VOICES[voice]}",
        "-s",
        str(audio.SPEEDS[speed]),
        "-p",
        str(audio.PITCHES[pitch]),
        "--stdout",
        audio.DIGIT_WORDS[name][digit],
    ]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    waveform, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return waveform, rate


def clip(waveform: np.ndarray, rate: int) -> tuple[np.ndarray, bool]:
    """The word resampled, trimmed, scaled and placed in a clip of CLIP_SAMPLES samples, and
    whether it had to be cut."""
    import librosa

    waveform = librosa.resample(waveform, orig_sr=rate, target_sr=audio.SAMPLE_RATE)
    waveform, _ = librosa.effects.trim(waveform, top_db=40)
    waveform = PEAK * waveform / np.abs(waveform).max()
    out = np.zeros(audio.CLIP_SAMPLES, dtype=np.float32)
    keep = min(len(waveform), audio.CLIP_SAMPLES - LEAD)
    out[LEAD : LEAD + keep] = waveform[:keep]
    return out, keep < len(waveform)


def make(limit: int | None = None) -> dict[str, np.ndarray]:
    """The data set's arrays (the first ``limit`` clips only, if given)."""
    rows = combinations()[:limit]
    features = np.empty((len(rows), audio.N_MELS, audio.FRAMES), dtype=np.uint8)
    truncated = np.zeros(len(rows), dtype=np.bool_)
    for i, (language, digit, voice, speed, pitch) in enumerate(rows):
        waveform, rate = speak(language, digit, voice, speed, pitch)
        samples, truncated[i] = clip(waveform, rate)
        decibels = audio.log_mel(samples)
        features[i] = np.round((decibels - audio.DB_FLOOR) * (255 / -audio.DB_FLOOR))
    language, digit, voice, speed, pitch = np.array(rows, dtype=np.uint8).reshape(-1, 5).T
    return {
        "features": features,
        "word": digit + 10 * language,
        "language": language,
        "voice": voice,
        "speed": np.array(audio.SPEEDS, dtype=np.int16)[speed],
        "pitch": pitch,
        "truncated": truncated,
        **{key: np.array(value) for key, value in audio.json_settings().items()},
        "voices": np.array(audio.VOICES),
        "words": np.array(audio.WORDS),
        "espeak_version": np.array(espeak_version()),
    }


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_PATH)
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT clips")
    args = parser.parse_args(argv)
    arrays = make(args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(
        f"{args.out}: {len(arrays['features'])} clips, {arrays['truncated'].sum()} cut short, "
        f"{args.out.stat().st_size / 1e6:.2f} MB",
        file=sys.stderr,
    )
    return args.out


if __name__ == "__main__":
    main()
