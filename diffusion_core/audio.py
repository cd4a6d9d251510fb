"""Spoken digits: log-mel spectrograms, their inverse, pitch, the data set and its judge.

Features. A clip is a mono waveform at :data:`SAMPLE_RATE` = 8000 Hz. Its log-mel spectrogram
(:func:`log_mel`) is the short-time Fourier transform with a Hann window of :data:`N_FFT` = 512
samples (64 ms) every :data:`HOP` = 128 samples (16 ms, so 62.5 frames a second), its power
summed by :data:`N_MELS` = 64 triangular mel filters from 0 to 4000 Hz (librosa's Slaney
filter bank) and expressed in decibels, floored at :data:`DB_FLOOR` = -80 dB:

    S[m, k] = 10 log10 max(sum_f M[m, f] |STFT(x)[f, k]|^2, 1e-8)      (clipped to [-80, 0])

A clip of the data set is :data:`FRAMES` = 48 frames long (0.752 s): a 64 x 48 image.
Sixty-four bands are about what it takes to resolve the harmonics of a voice above 90 Hz
below 1 kHz, where the mel scale is linear (31 Hz a band), so that the pitch survives. The
models see it rescaled to [-1, 1] (:func:`to_unit`, x = S / 40 + 1).

Inverse. :func:`to_waveform` undoes the filter bank by least squares (its pseudo-inverse,
negative powers set to zero) and finds
a phase by Griffin-Lim (Griffin & Lim 1984), :data:`GRIFFIN_LIM_ITERATIONS` = 48 iterations
from a fixed random phase (librosa's ``griffinlim`` with momentum 0.99, Perraudin et al. 2013).
The round trip S -> waveform -> S is not exact (a mel spectrogram has lost the phase and the
fine frequency detail); its error on the data set is bounded in ``tests/test_audio.py``.

Pitch. :func:`mel_pitch` reads the fundamental frequency off the log-mel spectrogram itself,
by matching each frame's ripple of harmonics below 1 kHz against the ripple a harmonic comb
would leave there (see its docstring); :func:`clip_pitches` applies it to a batch of model
clips. It needs no waveform, so real and generated clips are measured alike and without the
cost and the octave errors of a pitch tracker run on Griffin-Lim audio.

Data. ``scripts/make_spoken_digits.py`` had espeak-ng speak the ten digit words in English
(zero .. nine) and in Mandarin (ling, yi, er, ... jiu) in ten voice variants, two speeds and
three pitches, and stored the log-mel spectrograms (quantised to 8 bits, 0.31 dB steps) in
``diffusion_core/data/spoken_digits.npz``; :func:`load_spoken_digits` reads it (no
espeak-ng needed). The words are the twenty classes 0..19 (:data:`WORDS`: English digits
0..9, then Mandarin digits 10..19). The voices are split once: the denoiser learns from
:data:`MODEL_VOICES`, the judge from :data:`JUDGE_VOICES`, so that the judge never heard a
voice the generator imitates.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_core import checkpoints, metrics
from diffusion_core import train as training
from diffusion_core._validation import (
    check_images,
    check_labels,
    check_number,
    check_positive_int,
)
from diffusion_core.losses import DiffusionLoss
from diffusion_core.nets import UNet
from diffusion_core.schedules import Schedule, linear_schedule
from diffusion_core.train import TrainConfig

__all__ = [
    "DB_FLOOR",
    "FRAMES",
    "GRIFFIN_LIM_ITERATIONS",
    "HOP",
    "CLASSIFIER_SETTINGS",
    "JUDGE_VOICES",
    "LANGUAGES",
    "MAX_GUIDANCE",
    "MODEL_VOICES",
    "N_FFT",
    "NUM_CONDITIONS",
    "N_MELS",
    "PITCHES",
    "PITCH_MIN_MATCH",
    "PITCH_RANGE",
    "SAMPLE_RATE",
    "SOUND_MODEL",
    "SPEEDS",
    "VOICES",
    "WORDS",
    "SpectrogramDenoiser",
    "SpokenDigitClassifier",
    "SpokenDigits",
    "build_sound_net",
    "classifier_features",
    "clip_pitches",
    "condition_label",
    "frechet_distance",
    "generate",
    "from_unit",
    "load_classifier",
    "load_sound_model",
    "load_spoken_digits",
    "log_mel",
    "mel_pitch",
    "sound_recipe",
    "sound_schedule",
    "to_unit",
    "to_waveform",
    "train_classifier",
    "word_accuracy",
]

SAMPLE_RATE = 8000
N_FFT = 512
HOP = 128
N_MELS = 64
FRAMES = 48
DB_FLOOR = -80.0
F_MAX = SAMPLE_RATE / 2
GRIFFIN_LIM_ITERATIONS = 48
CLIP_SAMPLES = (FRAMES - 1) * HOP  # a centred STFT of this many samples has FRAMES frames
LANGUAGES = ("en-us", "cmn")
DIGIT_WORDS = {
    "en-us": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "cmn": ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九"),
}
WORDS = DIGIT_WORDS["en-us"] + DIGIT_WORDS["cmn"]
VOICES = ("m1", "m3", "m5", "m7", "f1", "f3", "m2", "m4", "f2", "f4")
MODEL_VOICES = VOICES[:6]
JUDGE_VOICES = VOICES[6:]
SPEEDS = (175, 220)  # espeak-ng -s, words per minute
PITCHES = (20, 50, 80)  # espeak-ng -p, 0..99
PITCH_RANGE = (60.0, 320.0)  # Hz: the f0 searched by mel_pitch, around the data's 67..255
_DATA_FILE = "spoken_digits.npz"


# ------------------------------------------------------------------------------- features


def _check_waveform(name: str, waveform, minimum: int = 1) -> np.ndarray:
    """A finite 1-D float waveform of at least ``minimum`` samples, as float32 NumPy."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    if not isinstance(waveform, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a tensor, got {type(waveform).__name__}")
    if not np.issubdtype(waveform.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point samples, got dtype {waveform.dtype}")
    if waveform.ndim != 1:
        raise ValueError(f"{name} must be 1-D (samples,), mono, got shape {waveform.shape}")
    if waveform.shape[0] < minimum:
        raise ValueError(f"{name} must have at least {minimum} samples, got {waveform.shape[0]}")
    if not np.isfinite(waveform).all():
        raise ValueError(f"{name} must be finite, but it contains NaN or infinity")
    return waveform.astype(np.float32)


def _check_spectrogram(name: str, spectrogram) -> np.ndarray:
    """A finite log-mel spectrogram (N_MELS, frames) in dB, frames >= 1, as float32 NumPy."""
    if isinstance(spectrogram, torch.Tensor):
        spectrogram = spectrogram.detach().cpu().numpy()
    if not isinstance(spectrogram, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy array or a tensor, got {type(spectrogram).__name__}"
        )
    if not np.issubdtype(spectrogram.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point values, got dtype {spectrogram.dtype}")
    if spectrogram.ndim != 2 or spectrogram.shape[0] != N_MELS or spectrogram.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape ({N_MELS}, frames) with frames >= 1, got {spectrogram.shape}"
        )
    if not np.isfinite(spectrogram).all():
        raise ValueError(f"{name} must be finite, but it contains NaN or infinity")
    return spectrogram.astype(np.float32)


def log_mel(waveform) -> np.ndarray:
    """The log-mel spectrogram (N_MELS, 1 + len // HOP) in dB of a waveform at SAMPLE_RATE.

    ``waveform``: a finite 1-D float array (or tensor) of at least N_FFT // 2 + 1 samples
    (the reflection padding of the centred STFT needs them). See the module docstring.
    """
    import librosa

    waveform = _check_waveform("waveform", waveform, minimum=N_FFT // 2 + 1)
    power = librosa.feature.melspectrogram(
        y=waveform,
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP,
        n_mels=N_MELS,
        fmin=0.0,
        fmax=F_MAX,
        power=2.0,
    )
    decibels = librosa.power_to_db(power, ref=1.0, amin=1e-8, top_db=None)
    return np.clip(decibels, DB_FLOOR, 0.0).astype(np.float32)


def to_waveform(spectrogram, iterations: int = GRIFFIN_LIM_ITERATIONS, seed: int = 0) -> np.ndarray:
    """A waveform at SAMPLE_RATE whose log-mel spectrogram approximates ``spectrogram``.

    ``spectrogram``: (N_MELS, frames) in dB, as :func:`log_mel` gives it. The power spectrum
    is recovered from the mel bands by least squares (the filter bank's pseudo-inverse,
    negative values set to zero), the phase by ``iterations`` (1..1000) rounds of
    Griffin-Lim started from a random phase drawn with ``seed``. The result has
    (frames - 1) * HOP samples.
    """
    import librosa

    spectrogram = _check_spectrogram("spectrogram", spectrogram)
    iterations = check_positive_int("iterations", iterations, maximum=1000)
    seed = check_positive_int("seed", seed, minimum=0, maximum=2**32 - 1)
    power = _mel_pseudo_inverse() @ librosa.db_to_power(spectrogram)
    magnitude = np.sqrt(np.maximum(power, 0.0))
    return librosa.griffinlim(
        magnitude,
        n_iter=iterations,
        hop_length=HOP,
        n_fft=N_FFT,
        length=(spectrogram.shape[1] - 1) * HOP,
        random_state=np.random.default_rng(seed),
    ).astype(np.float32)


@functools.cache
def _mel_filters() -> np.ndarray:
    """librosa's Slaney mel filter bank (N_MELS, N_FFT // 2 + 1) of :func:`log_mel`."""
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=F_MAX)


@functools.cache
def _mel_pseudo_inverse() -> np.ndarray:
    """The Moore-Penrose pseudo-inverse (N_FFT // 2 + 1, N_MELS) of the mel filter bank."""
    return np.linalg.pinv(_mel_filters())


def _check_float_tensor(name: str, x) -> torch.Tensor:
    """A floating-point tensor; its values are not inspected (an affine map passes them on)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def to_unit(spectrogram: torch.Tensor) -> torch.Tensor:
    """Decibels in [DB_FLOOR, 0] mapped linearly to [-1, 1]: x = S / 40 + 1 (``spectrogram`` a
    floating-point tensor of any shape; its values are not inspected)."""
    return _check_float_tensor("spectrogram", spectrogram) / (-DB_FLOOR / 2) + 1.0


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_unit`, clipped to [DB_FLOOR, 0] dB (``x`` a floating-point
    tensor of any shape)."""
    return ((_check_float_tensor("x", x) - 1.0) * (-DB_FLOOR / 2)).clamp(DB_FLOOR, 0.0)


# ---------------------------------------------------------------------------------- pitch

_PITCH_BANDS_HZ = (50.0, 1000.0)  # mel bands whose centres lie here carry the harmonic ripple
_PITCH_ENVELOPE = 5  # smoothest cosines over those bands treated as the spectral envelope
_PITCH_DEPTH_DB = 40.0  # each frame (and template) floored this far below its peak
_PITCH_STEPS = 8  # candidate f0 per semitone
PITCH_MIN_MATCH = 0.6  # the least ripple correlation of a frame that counts


@functools.cache
def _window_power() -> tuple[np.ndarray, np.ndarray]:
    """|W(nu)|^2 of the STFT's Hann window at offsets nu (Hz) within 8 FFT bins, finely."""
    pad = 32
    window = np.hanning(N_FFT + 1)[:-1]  # periodic, as librosa's STFT uses
    response = np.fft.fftshift(np.abs(np.fft.fft(window, N_FFT * pad)) ** 2)
    offsets = (np.arange(N_FFT * pad) - N_FFT * pad // 2) * SAMPLE_RATE / (N_FFT * pad)
    keep = np.abs(offsets) <= 8 * SAMPLE_RATE / N_FFT
    return offsets[keep], response[keep]


@functools.cache
def _pitch_templates(fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate f0 (Hz), the bands used, and each candidate's comb ripple over them:
    the log-mel image of equal harmonics h f0 (h f0 below 1.4 kHz), floored, envelope removed
    and normalised to unit length (candidates, bands)."""
    candidates = fmin * 2 ** (
        np.arange(int(12 * _PITCH_STEPS * math.log2(fmax / fmin)) + 1) / (12 * _PITCH_STEPS)
    )
    low, high = _PITCH_BANDS_HZ
    bands = np.nonzero((_mel_centres() > low) & (_mel_centres() < high))[0]
    offsets, response = _window_power()
    bins = np.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT
    templates = []
    for f0 in candidates:
        harmonics = f0 * np.arange(1, int(1400.0 // f0) + 1)
        comb = np.interp(bins[None, :] - harmonics[:, None], offsets, response, 0, 0).sum(0)
        templates.append(_mel_filters()[bands] @ comb)
    templates = 10 * np.log10(np.stack(templates) + 1e-30)
    floored = np.maximum(templates - templates.max(1, keepdims=True), -_PITCH_DEPTH_DB)
    ripple = floored @ _envelope_projection(len(bands))
    return candidates, bands, ripple / np.linalg.norm(ripple, axis=1, keepdims=True)


@functools.cache
def _mel_centres() -> np.ndarray:
    """The centre frequency (Hz) of each mel band."""
    import librosa

    return librosa.mel_frequencies(N_MELS + 2, fmin=0.0, fmax=F_MAX)[1:-1]


@functools.cache
def _envelope_projection(bands: int) -> np.ndarray:
    """The projection (bands, bands) that removes the _PITCH_ENVELOPE smoothest cosines."""
    grid = (np.arange(bands) + 0.5) / bands
    basis = np.stack([np.cos(np.pi * j * grid) for j in range(_PITCH_ENVELOPE)], axis=1)
    return np.eye(bands) - basis @ np.linalg.pinv(basis)


def mel_pitch(
    spectrogram,
    fmin: float = PITCH_RANGE[0],
    fmax: float = PITCH_RANGE[1],
    voiced_db: float = 30.0,
    min_match: float = PITCH_MIN_MATCH,
) -> float:
    """The fundamental frequency (Hz) of a log-mel spectrogram, read off its harmonics.

    What. Below 1 kHz the mel bands are 36 Hz apart, so a voice's harmonics (the multiples of
    its f0) leave a ripple across the bands whose period is f0. Each frame's ripple is matched
    against that of a comb of equal harmonics at each candidate f (``fmin``..``fmax`` Hz, eight
    per semitone) put through the STFT window and mel filters of :func:`log_mel`. With x_k the
    bands of frame k between 50 Hz and 1 kHz in dB and t(f) the comb's, each floored 40 dB
    below its peak, and P the projection that removes the five smoothest cosines across those
    bands (the formant envelope, which the comb lacks),

        r_k(f) = <P x_k, P t(f)> / (|P x_k| |P t(f)|),    f_k = argmax_f r_k(f),
        f0 = exp median { log f_k : frame k voiced and r_k(f_k) >= min_match },

    a frame being voiced when its power in those bands lies within ``voiced_db`` (in (0, 80])
    dB of the loudest frame's.

    Why. The correlation scores the ripple's period, not its depth; a comb at f0 / 2 puts
    teeth where the spectrum has valleys and one at 2 f0 misses every other harmonic, so both
    match worse than the comb at f0, and the octave errors of a waveform tracker on Griffin-Lim
    audio do not arise. No phase is needed, and the cost is one small matrix product. Below
    about 80 Hz the harmonics lie closer than two bands and the filters smooth the ripple away;
    such frames match no comb well, and ``min_match`` (in [0, 1)) leaves them out rather than
    read them at a multiple of f0. Returns NaN when fewer than three frames match (a clip
    without resolved harmonics, or silence).

    ``spectrogram``: (N_MELS, frames) in dB as :func:`log_mel` gives it, frames >= 1.
    ``fmin`` < ``fmax``, both in [40, 1000] Hz.
    """
    spectrogram = _check_spectrogram("spectrogram", spectrogram).astype(np.float64)
    fmin = check_number("fmin", fmin, 40.0, 1000.0)
    fmax = check_number("fmax", fmax, 40.0, 1000.0)
    if not fmin < fmax:
        raise ValueError(f"fmin must be below fmax, got fmin = {fmin:g}, fmax = {fmax:g}")
    voiced_db = check_number("voiced_db", voiced_db, 0.0, 80.0, low_open=True)
    min_match = check_number("min_match", min_match, 0.0, 1.0, high_open=True)
    candidates, bands, ripple = _pitch_templates(fmin, fmax)
    frames = spectrogram[bands]
    power = 10 * np.log10(np.sum(10 ** (frames / 10), axis=0))
    frames = frames[:, power > power.max() - voiced_db]
    frames = np.maximum(frames, frames.max(0, keepdims=True) - _PITCH_DEPTH_DB)
    observed = _envelope_projection(len(bands)) @ frames
    norms = np.linalg.norm(observed, axis=0)
    observed = observed[:, norms > 1e-6] / norms[norms > 1e-6]
    match = ripple @ observed  # (candidates, frames): r_k(f)
    clear = match.max(axis=0) >= min_match
    if clear.sum() < 3:
        return math.nan
    return float(np.exp(np.median(np.log(candidates[match[:, clear].argmax(axis=0)]))))


# ----------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SpokenDigits:
    """The spoken-digit clips: ``features`` (n, 1, N_MELS, FRAMES) float32 in [-1, 1]
    (:func:`to_unit` of the dB spectrogram) and, per clip, int64 tensors (n,): ``word``
    (0..19, :data:`WORDS`), ``language`` (0 English, 1 Mandarin), ``voice`` (index into
    :data:`VOICES`), ``speed`` (espeak-ng words per minute) and ``pitch`` (index into
    :data:`PITCHES`)."""

    features: torch.Tensor
    word: torch.Tensor
    language: torch.Tensor
    voice: torch.Tensor
    speed: torch.Tensor
    pitch: torch.Tensor

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, mask: torch.Tensor) -> SpokenDigits:
        """The clips where the boolean (or index) tensor ``mask`` selects them."""
        return SpokenDigits(
            *(getattr(self, field.name)[mask] for field in dataclasses.fields(self))
        )

    def voices(self, names) -> SpokenDigits:
        """The clips spoken by the voice variants ``names`` (a subset of :data:`VOICES`)."""
        unknown = set(names) - set(VOICES)
        if unknown:
            raise ValueError(f"names must be voices of {VOICES}, got unknown {sorted(unknown)}")
        wanted = torch.tensor([VOICES.index(name) for name in names])
        return self.subset(torch.isin(self.voice, wanted))


def load_spoken_digits() -> SpokenDigits:
    """The data set that ships in ``diffusion_core/data/`` (found through importlib.resources,
    so a lone notebook finds it too), checked against this module's feature settings."""
    resource = importlib.resources.files("diffusion_core") / "data" / _DATA_FILE
    with resource.open("rb") as file, np.load(file) as data:
        settings = json_settings()
        stored = {key: data[key].item() for key in settings}
        if stored != settings:
            raise ValueError(
                f"{_DATA_FILE} was made with feature settings {stored}, this library uses "
                f"{settings}: run scripts/make_spoken_digits.py again"
            )
        decibels = data["features"].astype(np.float32) * (-DB_FLOOR / 255) + DB_FLOOR
        columns = {key: torch.from_numpy(data[key].astype(np.int64)) for key in _LABELS}
    features = to_unit(torch.from_numpy(decibels))[:, None]
    return SpokenDigits(features=features, **columns)


_LABELS = ("word", "language", "voice", "speed", "pitch")


def json_settings() -> dict:
    """The feature settings recorded in the data file (and checked when it is read)."""
    return {
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "hop": HOP,
        "n_mels": N_MELS,
        "frames": FRAMES,
        "db_floor": DB_FLOOR,
    }


def condition_label(word, pitch_level) -> torch.Tensor:
    """The denoiser's class of a (word, pitch level) pair: word * 3 + pitch level, in
    0..NUM_CONDITIONS - 1 (``word`` in 0..19, ``pitch_level`` an index into :data:`PITCHES`;
    ints or integer tensors of one shape)."""
    for name, value in (("word", word), ("pitch_level", pitch_level)):
        if isinstance(value, bool) or not isinstance(value, int | torch.Tensor):
            kind = type(value).__name__
            raise TypeError(f"{name} must be an int or an integer tensor, got {kind}")
    word, pitch_level = torch.as_tensor(word), torch.as_tensor(pitch_level)
    check_labels("word", word.reshape(-1), classes=len(WORDS))
    check_labels("pitch_level", pitch_level.reshape(-1), classes=len(PITCHES))
    return word.long() * len(PITCHES) + pitch_level.long()


NUM_CONDITIONS = len(WORDS) * len(PITCHES)
MAX_GUIDANCE = 100.0  # the largest guidance weight generate accepts (the book uses 1 to 4)


# ------------------------------------------------------------------------------ the judge


class SpokenDigitClassifier(nn.Module):
    """A small CNN for log-mel clips (n, 1, N_MELS, FRAMES) in [-1, 1]: twenty word logits.

        conv3x3(1 -> 16) silu, three stride-2 conv3x3 (16 -> 32 -> 64 -> 64) silu,
        mean over time, linear(64 * 8 -> 64) silu, linear(64 -> 20)

    The mean over time makes it indifferent to where in the clip the word lies. :meth:`features`
    returns the 64 activations before the last layer, where generated and real clips are
    compared (as FID compares images in Inception's features).
    """

    FEATURES = 64

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, 16, 3, padding=1),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.Conv2d(64, 64, 3, stride=2, padding=1),
            ]
        )
        self.hidden = nn.Linear(64 * (N_MELS // 8), self.FEATURES)
        self.head = nn.Linear(self.FEATURES, len(WORDS))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.silu(conv(x))
        return F.silu(self.hidden(x.mean(dim=3).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


CLASSIFIER_SETTINGS = {"steps": 400, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0}
"""How :func:`train_classifier` trains the judge (fields of
:class:`~diffusion_core.train.TrainConfig`)."""


def _check_clips(name: str, clips, minimum: int = 1) -> torch.Tensor:
    return check_images(name, clips, 1, (N_MELS, FRAMES), minimum=minimum)


def train_classifier(
    clips: torch.Tensor, words: torch.Tensor, steps: int = CLASSIFIER_SETTINGS["steps"]
) -> SpokenDigitClassifier:
    """Train a :class:`SpokenDigitClassifier` on ``clips`` (n, 1, N_MELS, FRAMES) labelled with
    ``words`` (n,) in 0..19, with :class:`~diffusion_core.images.ClassifierLoss` and the one
    training loop, on one CPU thread, deterministically (weights and minibatches from the
    seed of :data:`CLASSIFIER_SETTINGS`). Returned in eval mode without gradients."""
    from diffusion_core.images import ClassifierLoss

    clips = _check_clips("clips", clips).float()
    words = check_labels("words", words, clips.shape[0], len(WORDS))
    config = TrainConfig(
        **{**CLASSIFIER_SETTINGS, "steps": check_positive_int("steps", steps)},
        grad_clip=None,
        ema_decay=None,
        shared_generator=True,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net = SpokenDigitClassifier()
        result = training.train(
            net, clips, ClassifierLoss(), config, labels=words, progress=False, device="cpu"
        )
    finally:
        torch.set_num_threads(threads)
    return result.net.eval().requires_grad_(False)


def load_classifier(path=None) -> SpokenDigitClassifier:
    """The judge written by ``scripts/train_sound.py`` (default: the packaged
    ``spoken_digits_classifier``), in eval mode without gradients."""
    path = checkpoints.packaged("spoken_digits_classifier") if path is None else path
    state = checkpoints.load(path, checkpoints.SOUND_CLASSIFIER)
    classifier = SpokenDigitClassifier()
    classifier.load_state_dict(state["weights"])
    return classifier.eval().requires_grad_(False)


def _check_classifier(classifier) -> None:
    if not isinstance(classifier, SpokenDigitClassifier):
        raise TypeError(
            f"classifier must be a SpokenDigitClassifier, got {type(classifier).__name__}"
        )


@torch.no_grad()
def classifier_features(classifier: SpokenDigitClassifier, clips: torch.Tensor) -> torch.Tensor:
    """The judge's feature vectors of ``clips`` (n, 1, N_MELS, FRAMES), float64 (n, 64)."""
    _check_classifier(classifier)
    return classifier.features(_check_clips("clips", clips).float()).double()


@torch.no_grad()
def word_accuracy(classifier: SpokenDigitClassifier, clips: torch.Tensor, words) -> float:
    """The fraction of ``clips`` (n >= 1) that the judge hears as ``words`` (n,) in 0..19."""
    _check_classifier(classifier)
    clips = _check_clips("clips", clips, minimum=1)
    words = check_labels("words", words, clips.shape[0], len(WORDS))
    return float((classifier(clips.float()).argmax(1) == words).double().mean())


def frechet_distance(classifier: SpokenDigitClassifier, clips, reference) -> float:
    """The Frechet distance between ``clips`` and ``reference`` (each n >= 2) in the judge's
    features (:func:`diffusion_core.metrics.frechet_distance`)."""
    _check_clips("clips", clips, minimum=2)
    _check_clips("reference", reference, minimum=2)
    return float(
        metrics.frechet_distance(
            classifier_features(classifier, clips), classifier_features(classifier, reference)
        )
    )


# ---------------------------------------------------------------------------- the denoiser


class SpectrogramDenoiser(nn.Module):
    """A conditional denoiser for log-mel clips (n, 1, N_MELS, FRAMES): a
    :class:`~diffusion_core.nets.UNet` that reads the spectrogram in patches.

    The clip is cut into ``patch`` x ``patch`` blocks stacked as channels
    (``pixel_unshuffle``: (1, 64, 48) -> (16, 16, 12) for patch 4), the U-Net denoises that
    image, and the output is put back in place (``pixel_shuffle``). The rearrangement only
    permutes the pixels, so the noise stays independent and Gaussian and the diffusion is
    exactly the one on the spectrogram; it divides the U-Net's work by patch^2 (the patches of
    latent diffusion and of DiT serve the same end). ``forward(x, t, labels)`` as the U-Net's,
    with labels from :func:`condition_label` (``null_label`` = NUM_CONDITIONS: no condition).
    """

    def __init__(self, patch: int = 4, channels=(32, 64), blocks: int = 1, attention=False):
        super().__init__()
        self.patch = check_positive_int("patch", patch, maximum=8)
        if N_MELS % patch or FRAMES % patch:
            raise ValueError(f"patch must divide {N_MELS} and {FRAMES}, got {patch}")
        self.unet = UNet(
            in_channels=patch * patch,
            channels=tuple(channels),
            blocks=blocks,
            attention=attention,
            num_classes=NUM_CONDITIONS,
        )

    @property
    def null_label(self) -> int:
        return self.unet.null_label

    def forward(self, x: torch.Tensor, t, labels=None) -> torch.Tensor:
        _check_clips("x", x)
        patches = F.pixel_unshuffle(x, self.patch)
        return F.pixel_shuffle(self.unet(patches, t, labels), self.patch)


SOUND_MODEL = {
    "net": {"patch": 4, "channels": [64, 128], "blocks": 1, "attention": False},
    "train": {
        "prediction": "v",
        "steps": 1200,
        "batch_size": 32,
        "lr": 2e-3,
        "ema_decay": 0.995,
        "seed": 0,
        "label_dropout": 0.15,
        "null_label": NUM_CONDITIONS,
    },
    "init_seed": 0,
}
"""The spectrogram denoiser of the chapter (:class:`SpectrogramDenoiser`), conditioned on
:func:`condition_label` (the null class NUM_CONDITIONS for classifier-free guidance), trained
to predict v (Salimans & Ho 2022) under DDPM's linear schedule on the clips of
:data:`MODEL_VOICES`
(``scripts/train_sound.py``)."""


def sound_schedule() -> Schedule:
    """DDPM's linear schedule, T = 1000."""
    return linear_schedule(1000)


def build_sound_net(net_config: dict) -> SpectrogramDenoiser:
    """The denoiser of a ``"net"`` entry of :data:`SOUND_MODEL` (weights from the global seed)."""
    if not isinstance(net_config, dict):
        raise TypeError(f"net_config must be a dict, got {type(net_config).__name__}")
    return SpectrogramDenoiser(**net_config)


def sound_recipe(settings: dict) -> tuple[DiffusionLoss, TrainConfig]:
    """The objective and the training config of a ``"train"`` entry of :data:`SOUND_MODEL`."""
    loss_fields = {item.name for item in dataclasses.fields(DiffusionLoss)}
    objective = DiffusionLoss(
        sound_schedule(), **{k: v for k, v in settings.items() if k in loss_fields}
    )
    config = TrainConfig(**{k: v for k, v in settings.items() if k not in loss_fields})
    return objective, config


def load_sound_model(path=None) -> tuple[SpectrogramDenoiser, dict]:
    """The EMA denoiser of ``scripts/train_sound.py`` (default: the packaged
    ``spoken_digits_denoiser``) and the rest of its checkpoint; eval mode, no gradients."""
    path = checkpoints.packaged("spoken_digits_denoiser") if path is None else path
    state = checkpoints.load(path, checkpoints.SOUND_MODEL)
    with torch.random.fork_rng(devices=[]):
        net = build_sound_net(state["net"])
    net.load_state_dict({name: value.float() for name, value in state["ema"].items()})
    return net.eval().requires_grad_(False), {k: v for k, v in state.items() if k != "ema"}


@torch.no_grad()
def generate(
    net: SpectrogramDenoiser,
    labels: torch.Tensor,
    guidance: float,
    steps: int,
    generator: torch.Generator,
    prediction: str = SOUND_MODEL["train"]["prediction"],
) -> torch.Tensor:
    """Clips (n, 1, N_MELS, FRAMES) in [-1, 1] for the conditions ``labels`` (n,) of
    :func:`condition_label`: classifier-free guidance with weight ``guidance`` around the
    network (predicting ``prediction``: "eps", "x0" or "v") seen as a denoiser, sampled by
    DDIM (eta = 0) over ``steps`` (1..1000) evenly spaced steps of :func:`sound_schedule`,
    from noise drawn with ``generator``. ``guidance`` lies in [0, MAX_GUIDANCE]: 0 is the
    unconditional model, 1 the conditional one."""
    from diffusion_core import samplers
    from diffusion_core.parameterization import as_denoiser

    if not isinstance(net, SpectrogramDenoiser):
        raise TypeError(f"net must be a SpectrogramDenoiser, got {type(net).__name__}")
    labels = check_labels("labels", labels, classes=NUM_CONDITIONS)
    if labels.numel() == 0:
        raise ValueError("labels must hold at least one condition, got none")
    guidance = check_number("guidance", guidance, 0.0, MAX_GUIDANCE)
    steps = check_positive_int("steps", steps, maximum=1000)
    grid = sound_schedule().grid(steps)
    noise = samplers.prior_sample(grid, (len(labels), 1, N_MELS, FRAMES), generator)
    guided = samplers.classifier_free_guidance(
        as_denoiser(net, prediction), guidance, labels, net.null_label
    )
    return samplers.ddim(guided, noise.float(), grid).float().clamp(-1, 1)


def clip_pitches(clips: torch.Tensor) -> torch.Tensor:
    """The :func:`mel_pitch` (Hz) of each clip (n, 1, N_MELS, FRAMES) in [-1, 1] (as the data
    set and :func:`generate` give them): the same path for real and generated clips, float64
    (n,), NaN for a silent clip."""
    clips = _check_clips("clips", clips)
    return torch.tensor(
        [mel_pitch(from_unit(clip[0]).numpy()) for clip in clips], dtype=torch.float64
    )
