"""Handwritten digits for the image chapters, and the scores that judge generated images.

Data. The digits of scikit-learn (the UCI optical digits of Alpaydin & Kaynak 1998, shipped
with the package: nothing is downloaded) are 1797 grey images of 8x8 pixels with values
0..16, ten classes. :func:`load_digits_split` rescales them to [-1, 1] by x / 8 - 1 and splits
them once, stratified by class, into a training set (80 %) and a held-out test set (20 %).

Classifier. Image quality is measured in the feature space of a small convolutional network
trained on the training split (:class:`DigitsClassifier`), as FID measures it in the features
of an Inception network (Heusel et al. 2017). Its training is deterministic and takes a few
seconds; :func:`digits_classifier` caches the weights on disk after the first run.

Scores. :func:`image_scores` gives the Frechet distance between the feature statistics of
generated and held-out real images and the k-NN precision and recall of Kynkaanniemi et al.
(2019) (:mod:`diffusion_core.metrics`); :func:`real_floor` gives the same numbers for real
training images against the same test set, the values a perfect generator would reach at that
sample size. :func:`accuracy` is the classifier's accuracy on class-conditional samples.

Models. :data:`DIGITS_MODELS` holds the configurations of the two denoisers of the book (a
:class:`~diffusion_core.nets.UNet` trained on the training split with the simple eps-loss),
trained by ``scripts/train_digits.py`` into ``diffusion_core/weights/``; :func:`digits_recipe`
turns their settings into the objective and the config of :func:`diffusion_core.train.train`, and
:func:`load_digits_model` reads such a checkpoint back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import pathlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from diffusion_core import checkpoints, distributed, metrics
from diffusion_core import train as training
from diffusion_core._validation import (
    check_images,
    check_labels,
    check_number,
    check_positive_int,
    check_torch_generator,
)
from diffusion_core.losses import DiffusionLoss, Objective
from diffusion_core.nets import UNet
from diffusion_core.schedules import Schedule, linear_schedule
from diffusion_core.train import RunConfig, TrainConfig, TrainResult

__all__ = [
    "CACHE_ENV",
    "DIGITS_MODELS",
    "IMAGE_SHAPE",
    "MAX_REPEATS",
    "NUM_CLASSES",
    "ClassifierLoss",
    "DigitsClassifier",
    "DigitsSplit",
    "ImageScores",
    "accuracy",
    "build_net",
    "classifier_features",
    "digits_classifier",
    "digits_recipe",
    "digits_schedule",
    "image_scores",
    "load_digits_model",
    "load_digits_split",
    "real_floor",
    "train_classifier",
]

IMAGE_SHAPE = (1, 8, 8)
_IMAGE = (IMAGE_SHAPE[0], IMAGE_SHAPE[1:])  # (channels, size) for check_images
NUM_CLASSES = 10
CACHE_ENV = "DIFFUSION_CACHE"
MAX_REPEATS = 1000  # subsets that real_floor draws at most


# ------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsSplit:
    """Training and test images (n, 1, 8, 8), float32 in [-1, 1], with int64 labels (n,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """The digits rescaled to [-1, 1] and split, stratified by class, with a fixed seed.

    With the defaults: 1437 training and 360 test images, each class within one image of its
    share in both parts. ``test_fraction`` is a finite number in (0, 1) that leaves at least
    one image of each class on both sides; ``seed`` an int in 0..2**32 - 1.
    """
    check_number("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    check_positive_int("seed", seed, minimum=0, maximum=2**32 - 1)
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    train, test = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        random_state=seed,
        stratify=labels.numpy(),
    )
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    return DigitsSplit(images[train], labels[train], images[test], labels[test])


# ------------------------------------------------------------------------------- classifier


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 digits: two convolutions, a 64-unit feature layer, ten logits.

        conv3x3(1 -> 16) silu, conv3x3 stride 2 (16 -> 32) silu, linear(512 -> 64) silu,
        linear(64 -> 10)

    :meth:`features` returns the 64 activations before the last layer, the space in which
    generated and real images are compared.
    """

    FEATURES = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.hidden = nn.Linear(32 * 4 * 4, self.FEATURES)
        self.head = nn.Linear(self.FEATURES, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv2(F.silu(self.conv1(x))))
        return F.silu(self.hidden(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


_CLASSIFIER_DEFAULTS = {"steps": 600, "batch_size": 128, "lr": 3e-3, "weight_decay": 1e-4}


@contextlib.contextmanager
def _one_thread():
    """Run on one CPU thread (float sums then round the same way on every machine), then
    restore the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class ClassifierLoss(Objective):
    """The cross-entropy of a classifier as a training objective: per image,

        loss = -log softmax(net(x))_y,

    the negative log-likelihood of the true class y, averaged over this process's shard of the
    batch (``F.cross_entropy``). It draws nothing.
    """

    def __call__(self, net, x: torch.Tensor, labels, generator: torch.Generator):
        if labels is None:
            raise ValueError("ClassifierLoss needs labels, one class per image")
        x, labels = distributed.shard(x, labels)
        return F.cross_entropy(net(x), labels.to(x.device))


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int = 0,
    steps: int = _CLASSIFIER_DEFAULTS["steps"],
    batch_size: int = _CLASSIFIER_DEFAULTS["batch_size"],
    lr: float = _CLASSIFIER_DEFAULTS["lr"],
    weight_decay: float = _CLASSIFIER_DEFAULTS["weight_decay"],
    *,
    run: RunConfig | None = None,
    progress: bool | None = None,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a :class:`DigitsClassifier` with AdamW on :class:`ClassifierLoss`, on one thread.

    Deterministic: the initial weights come from ``seed`` (the global random state is left as
    it was) and the minibatches (drawn with replacement) from a generator seeded with it. The
    result's ``net`` is the classifier, in eval mode without gradients. ``run``, ``progress``
    and ``resume_from``: as for :func:`diffusion_core.train.train`.

    ``images`` (n, 1, 8, 8) with n >= 1 and ``labels`` (n,) in 0..9 are checked before any
    training; the other numbers as fields of :class:`~diffusion_core.train.TrainConfig`.
    """
    images = check_images("images", images, *_IMAGE, minimum=1).float()
    labels = check_labels("labels", labels, images.shape[0], NUM_CLASSES)
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=None,
        ema_decay=None,
        seed=seed,
        shared_generator=True,
    )
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = training.train(
            DigitsClassifier(),
            images,
            ClassifierLoss(),
            config,
            labels=labels,
            run=run,
            progress=progress,
            device="cpu",
            resume_from=resume_from,
        )
    result.net.eval().requires_grad_(False)
    return result


def _cache_dir(cache_dir) -> pathlib.Path:
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "diffusion_core"


def digits_classifier(
    split: DigitsSplit | None = None, cache_dir: str | os.PathLike | None = None
) -> DigitsClassifier:
    """The classifier of :func:`train_classifier` on ``split``'s training set (default split).

    The weights are cached in ``cache_dir`` (default ``$DIFFUSION_CACHE``, else
    ``~/.cache/diffusion_core``) under a name that hashes the training data, the settings, the
    source code of the network and of its training, and the torch version, so a cached copy is
    only ever the result of the same computation. Training runs on one thread, so the cached
    and a fresh classifier agree bit for bit on a given machine. If the cache cannot be written,
    the classifier is returned all the same.
    """
    split = load_digits_split() if split is None else split
    if not isinstance(split, DigitsSplit):
        raise TypeError(f"split must be a DigitsSplit or None, got {type(split).__name__}")
    if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
        raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
    key = hashlib.sha256()
    key.update(json.dumps({**_CLASSIFIER_DEFAULTS, "torch": str(torch.__version__)}).encode())
    recipe = (DigitsClassifier, ClassifierLoss, train_classifier, training)
    for code in recipe:  # a changed network, objective or loop: a new name
        with contextlib.suppress(OSError, TypeError):
            key.update(inspect.getsource(code).encode())
    for tensor in (split.train_images, split.train_labels):
        key.update(tensor.contiguous().numpy().tobytes())
    path = _cache_dir(cache_dir) / f"digits_classifier_{key.hexdigest()[:16]}.safetensors"
    classifier = DigitsClassifier()
    if path.is_file():
        # a damaged cache file (caught by its SHA-256) is retrained and overwritten below
        with contextlib.suppress(ValueError, RuntimeError, KeyError, OSError):
            state = checkpoints.load(path, checkpoints.DIGITS_CLASSIFIER)
            classifier.load_state_dict(state["weights"])
            return classifier.eval().requires_grad_(False)
    classifier = train_classifier(split.train_images, split.train_labels).net
    with contextlib.suppress(OSError):  # atomic write
        checkpoints.save(path, {"weights": classifier.state_dict()}, checkpoints.DIGITS_CLASSIFIER)
    return classifier


@torch.no_grad()
def classifier_features(classifier: DigitsClassifier, images: torch.Tensor) -> torch.Tensor:
    """The classifier's feature vectors of ``images`` (n, 1, 8, 8), as float64 (n, 64)."""
    _check_classifier(classifier)
    images = check_images("images", images, *_IMAGE)
    return classifier.features(images.float()).double()


@torch.no_grad()
def accuracy(classifier: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``images`` (n, 1, 8, 8), n >= 1, that the classifier assigns to
    ``labels``, an int tensor (n,) of classes 0..9."""
    _check_classifier(classifier)
    images = check_images("images", images, *_IMAGE, minimum=1)
    labels = check_labels("labels", labels, images.shape[0], NUM_CLASSES)
    predicted = classifier(images.float()).argmax(dim=1)
    return float((predicted == labels.to(predicted.device)).double().mean())


def _check_classifier(classifier) -> None:
    if not isinstance(classifier, DigitsClassifier):
        raise TypeError(f"classifier must be a DigitsClassifier, got {type(classifier).__name__}")


# ----------------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class ImageScores:
    """Frechet distance (lower is better), k-NN precision and recall (higher is better)."""

    frechet: float
    precision: float
    recall: float

    def __str__(self) -> str:
        return f"FD {self.frechet:.2f}, precision {self.precision:.2f}, recall {self.recall:.2f}"


def image_scores(
    images: torch.Tensor, reference: torch.Tensor, classifier: DigitsClassifier, k: int = 3
) -> ImageScores:
    """Scores of ``images`` against ``reference`` images, both (n, 1, 8, 8), in the classifier's
    feature space: :func:`~diffusion_core.metrics.frechet_distance` and
    :func:`~diffusion_core.metrics.knn_precision_recall` (real = ``reference``). Each set
    needs more than ``k`` images (and at least 2, for a covariance)."""
    _check_classifier(classifier)
    k = check_positive_int("k", k)
    check_images("images", images, *_IMAGE, minimum=max(2, k + 1))
    check_images("reference", reference, *_IMAGE, minimum=max(2, k + 1))
    fake = classifier_features(classifier, images)
    real = classifier_features(classifier, reference)
    precision, recall = metrics.knn_precision_recall(real, fake, k)
    return ImageScores(float(metrics.frechet_distance(fake, real)), float(precision), float(recall))


def real_floor(
    split: DigitsSplit,
    classifier: DigitsClassifier,
    n: int,
    repeats: int = 5,
    generator: torch.Generator | None = None,
    k: int = 3,
) -> tuple[ImageScores, ImageScores]:
    """What a perfect generator would score with ``n`` samples: real training images against
    the test set.

    Draws ``repeats`` subsets of n training images (without replacement) and scores each
    against the whole test set with :func:`image_scores`. Returns the mean and the standard
    deviation of the scores over the subsets. A generator is judged by its distance to this
    floor, not to zero: even real images have FD > 0 from a finite test set.
    """
    if not isinstance(split, DigitsSplit):
        raise TypeError(f"split must be a DigitsSplit, got {type(split).__name__}")
    _check_classifier(classifier)
    k = check_positive_int("k", k)
    n = check_positive_int("n", n, minimum=k + 1, maximum=len(split.train_images))
    repeats = check_positive_int("repeats", repeats, minimum=2, maximum=MAX_REPEATS)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    check_torch_generator("generator", generator)
    runs = []
    for _ in range(repeats):
        subset = torch.randperm(len(split.train_images), generator=generator)[:n]
        scores = image_scores(split.train_images[subset], split.test_images, classifier, k)
        runs.append([scores.frechet, scores.precision, scores.recall])
    runs = torch.tensor(runs, dtype=torch.float64)
    mean, std = runs.mean(0).tolist(), runs.std(0).tolist()
    return ImageScores(*mean), ImageScores(*std)


# ----------------------------------------------------------------------------------- models


DIGITS_MODELS = {
    "unconditional": {
        "net": {"channels": [16, 32, 64], "blocks": 1, "attention": True, "num_classes": None},
        "train": {"steps": 3000, "batch_size": 128, "lr": 1e-3, "ema_decay": 0.999, "seed": 0},
        "init_seed": 0,
    },
    "conditional": {
        "net": {
            "channels": [16, 32, 64],
            "blocks": 1,
            "attention": True,
            "num_classes": NUM_CLASSES,
        },
        "train": {
            "steps": 3000,
            "batch_size": 128,
            "lr": 1e-3,
            "ema_decay": 0.999,
            "seed": 1,
            "label_dropout": 0.2,
            "null_label": NUM_CLASSES,
        },
        "init_seed": 1,
    },
}
"""The two denoisers of the book: network, training settings (fields of
:class:`~diffusion_core.losses.DiffusionLoss` and :class:`~diffusion_core.train.TrainConfig`,
:func:`digits_recipe`) and the seed of the initial weights. Both predict eps under
:func:`digits_schedule`."""


def digits_schedule() -> Schedule:
    """The noise schedule of the digits models: DDPM's linear schedule, T = 1000."""
    return linear_schedule(1000)


def digits_recipe(settings: dict) -> tuple[DiffusionLoss, TrainConfig]:
    """The objective and the config of a ``"train"`` entry of :data:`DIGITS_MODELS` (or of a
    checkpoint's record of it, a dict): the names that are fields of
    :class:`~diffusion_core.losses.DiffusionLoss` (under :func:`digits_schedule`) go to the
    objective, the others to :class:`~diffusion_core.train.TrainConfig`."""
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict, got {type(settings).__name__}")
    loss_fields = {item.name for item in dataclasses.fields(DiffusionLoss)}
    objective = DiffusionLoss(
        digits_schedule(), **{k: v for k, v in settings.items() if k in loss_fields}
    )
    config = TrainConfig(**{k: v for k, v in settings.items() if k not in loss_fields})
    return objective, config


def build_net(net_config: dict) -> UNet:
    """A :class:`~diffusion_core.nets.UNet` for 8x8 grey images from a ``"net"`` entry of
    :data:`DIGITS_MODELS` (its weights are drawn from the global random state)."""
    if not isinstance(net_config, dict) or not isinstance(net_config.get("channels"), list | tuple):
        raise TypeError(f"net_config must be a dict with a 'channels' list, got {net_config!r}")
    config = dict(net_config)
    return UNet(in_channels=1, channels=tuple(config.pop("channels")), **config)


def load_digits_model(path: str | os.PathLike) -> tuple[UNet, dict]:
    """The EMA network of a checkpoint written by ``scripts/train_digits.py``, and its metadata.

    The file is a :mod:`diffusion_core.checkpoints` checkpoint of kind "digits_model" (data
    only, never code, verified by SHA-256): a ``ValueError`` naming the file if it is not one
    or is damaged. The network is in eval mode without gradients; the metadata holds
    everything in the file except the weights.
    """
    state = checkpoints.load(path, checkpoints.DIGITS_MODEL)
    try:
        with torch.random.fork_rng(devices=[]):
            net = build_net(state["net"])
        net.load_state_dict(state["ema"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise checkpoints.CheckpointError(
            f"{path} is a digits model checkpoint whose net or weights do not fit ({err})"
        ) from None
    metadata = {key: value for key, value in state.items() if key != "ema"}
    return net.eval().requires_grad_(False), metadata
