"""Tests for :mod:`diffusion_core.images`, the image metrics of :mod:`diffusion_core.metrics`
and the training script ``scripts/train_digits.py``.

A full retraining of the committed checkpoints takes tens of minutes on one CPU core, too slow
for a unit test. Instead, the script is run twice for a few steps and must give the same weights
bit for bit, and the committed checkpoints must record the settings the script uses.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusion_core import checkpoints, images, metrics
from diffusion_core.nets import UNet


@pytest.fixture(scope="module")
def split():
    return images.load_digits_split()


@pytest.fixture(scope="module")
def classifier(split, tmp_path_factory):
    return images.digits_classifier(split, cache_dir=tmp_path_factory.mktemp("cache"))


# --- data ------------------------------------------------------------------------------------


def test_split_sizes_range_and_stratification(split):
    assert split.train_images.shape == (1437, 1, 8, 8)
    assert split.test_images.shape == (360, 1, 8, 8)
    assert split.train_images.dtype == torch.float32
    pixels = torch.cat([split.train_images, split.test_images]).flatten()
    assert pixels.min() == -1 and pixels.max() == 1
    # values are 0..16 divided by 8, minus 1: 17 grey levels, exactly representable
    assert torch.equal(((pixels + 1) * 8).round(), (pixels + 1) * 8)
    train_counts = torch.bincount(split.train_labels, minlength=10)
    test_counts = torch.bincount(split.test_labels, minlength=10)
    share = (train_counts + test_counts) / 1797
    assert ((test_counts - 360 * share).abs() <= 1).all()


def test_split_is_deterministic_and_disjoint(split):
    again = images.load_digits_split()
    assert torch.equal(again.train_images, split.train_images)
    assert torch.equal(again.test_labels, split.test_labels)
    train_rows = {tuple(row.tolist()) for row in split.train_images.flatten(1)}
    test_rows = [tuple(row.tolist()) for row in split.test_images.flatten(1)]
    # the data set has a few exact duplicates; nearly every test image is new
    assert sum(row in train_rows for row in test_rows) <= 3


# --- classifier ------------------------------------------------------------------------------


def test_classifier_reaches_the_stated_test_accuracy(classifier, split):
    assert images.accuracy(classifier, split.test_images, split.test_labels) > 0.95
    assert images.accuracy(classifier, split.train_images, split.train_labels) > 0.99


def test_classifier_training_is_deterministic_and_leaves_the_global_seed_alone(split):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = images.train_classifier(split.train_images, split.train_labels, steps=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = images.train_classifier(split.train_images, split.train_labels, steps=5)
    assert first.losses == second.losses and len(first.losses) == 5
    for a, b in zip(first.net.state_dict().values(), second.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not first.net.training and not any(p.requires_grad for p in first.net.parameters())


def test_classifier_training_checks_its_labels(split):
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        images.train_classifier(split.train_images[:4], torch.tensor([0, 1, 2, 10]), steps=1)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        images.train_classifier(split.train_images[:4], torch.tensor([0, 1, 2]), steps=1)
    with pytest.raises(ValueError, match="ClassifierLoss needs labels"):
        images.ClassifierLoss()(images.DigitsClassifier(), split.train_images[:4], None, None)


def test_classifier_objective_is_the_cross_entropy(split):
    torch.manual_seed(0)
    classifier = images.DigitsClassifier()
    x, y = split.train_images[:16], split.train_labels[:16]
    loss = images.ClassifierLoss()(classifier, x, y, torch.Generator())
    expected = -torch.log_softmax(classifier(x), dim=1)[torch.arange(16), y].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_digits_recipe_splits_the_settings_between_objective_and_config():
    objective, config = images.digits_recipe(images.DIGITS_MODELS["conditional"]["train"])
    assert (objective.label_dropout, objective.null_label, objective.prediction) == (0.2, 10, "eps")
    assert objective.schedule.T == 1000
    assert (config.steps, config.batch_size, config.lr, config.seed) == (3000, 128, 1e-3, 1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        images.digits_recipe({"colour": "red"})


def test_cached_classifier_equals_the_trained_one(classifier, split, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "cache0"  # the classifier fixture's cache
    files = list(cache.glob("digits_classifier_*.safetensors"))
    assert len(files) == 1
    loaded = images.digits_classifier(split, cache_dir=cache)
    for a, b in zip(loaded.state_dict().values(), classifier.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_classifier_features_and_shape_checks(classifier, split):
    features = images.classifier_features(classifier, split.test_images[:7])
    assert features.shape == (7, images.DigitsClassifier.FEATURES)
    assert features.dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\)"):
        images.classifier_features(classifier, torch.zeros(3, 64))


# --- metrics ---------------------------------------------------------------------------------


def test_frechet_distance_is_zero_for_identical_samples():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert metrics.frechet_distance(x, x) < 1e-9
    # a permutation has the same statistics
    assert metrics.frechet_distance(x, x.flip(0)) < 1e-9


def test_frechet_distance_matches_the_gaussian_closed_form():
    # Samples whitened to have exactly the given means and (unbiased) covariances:
    # for diagonal covariances FD = |m1 - m2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    generator = torch.Generator().manual_seed(1)

    def exact_sample(mean, variances, n=500):
        z = torch.randn(n, len(mean), generator=generator, dtype=torch.float64)
        z = z - z.mean(0)
        z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T
        return mean + z * variances.sqrt()

    m1, a = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 4.0, 0.25])
    m2, b = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([9.0, 1.0, 0.25])
    expected = ((m1 - m2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    got = metrics.frechet_distance(exact_sample(m1, a), exact_sample(m2, b, n=300))
    assert math.isclose(got, expected, rel_tol=1e-9)


def test_nearest_neighbour_distances_on_a_line():
    reference = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    x = torch.tensor([[0.9], [5.5], [3.0]])
    distances, indices = metrics.nearest_neighbour_distances(x, reference, k=2)
    torch.testing.assert_close(
        distances, torch.tensor([[0.1, 0.9], [1.5, 2.5], [0.0, 2.0]], dtype=torch.float64)
    )
    assert indices.tolist() == [[1, 0], [3, 2], [2, 1]]


def test_precision_and_recall_are_one_for_identical_samples_and_zero_for_far_ones():
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(2))
    precision, recall = metrics.knn_precision_recall(x, x.flip(0), k=3)
    assert precision == 1 and recall == 1
    precision, recall = metrics.knn_precision_recall(x, x + 100, k=3)
    assert precision == 0 and recall == 0


def test_precision_and_recall_on_a_hand_made_example():
    # Real points 0, 1, 2, 3 on a line: with k = 1 every real radius is 1, so the real
    # manifold is [-1, 4]. Fake points 0.5, 3.5, 10: two of three are inside (precision 2/3).
    # Fake radii with k = 1: 3, 3, 6.5; the ball around 10 reaches 3.5, so every real point
    # is covered (recall 1).
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [3.5], [10.0]])
    precision, recall = metrics.knn_precision_recall(real, fake, k=1)
    assert math.isclose(precision, 2 / 3) and recall == 1
    # mode dropping: fakes only near 0 cover the real point 0 only (recall 1/4)
    precision, recall = metrics.knn_precision_recall(real, torch.tensor([[0.0], [0.1]]), k=1)
    assert precision == 1 and recall == 0.25


def test_precision_recall_checks_k():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="k must be smaller"):
        metrics.knn_precision_recall(x, x, k=5)


# --- scores ----------------------------------------------------------------------------------


def test_scores_of_the_test_set_against_itself_are_perfect(classifier, split):
    scores = images.image_scores(split.test_images, split.test_images, classifier)
    assert scores.frechet < 1e-6 and scores.precision == 1 and scores.recall == 1
    assert str(scores).startswith("FD 0.00, precision 1.00, recall 1.00")


def test_real_floor_is_far_below_noise(classifier, split):
    floor, spread = images.real_floor(split, classifier, n=360, repeats=3)
    noise = torch.randn(360, 1, 8, 8, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    scores = images.image_scores(noise, split.test_images, classifier)
    assert 0 < floor.frechet < scores.frechet / 10
    assert floor.precision > 0.8 and floor.recall > 0.8
    assert scores.precision < 0.1
    assert spread.frechet > 0


# --- models and the training script ----------------------------------------------------------


def test_load_digits_model_round_trip(tmp_path):
    torch.manual_seed(0)
    spec = {"channels": [8, 16], "blocks": 1, "attention": True, "num_classes": 10}
    net = images.build_net(spec)
    path = tmp_path / "model.safetensors"
    checkpoints.save(path, {"net": spec, "ema": net.state_dict(), "seed": 4}, "digits_model")
    loaded, metadata = images.load_digits_model(path)
    assert isinstance(loaded, UNet) and loaded.null_label == 10
    assert metadata == {"net": spec, "seed": 4}
    for a, b in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    checkpoints.save(path, {"net": spec}, "digits_model")
    with pytest.raises(ValueError, match="model.safetensors is a digits model checkpoint whose"):
        images.load_digits_model(path)
    checkpoints.save(path, {"weights": net.state_dict()}, "digits_classifier")
    with pytest.raises(ValueError, match="model.safetensors holds the digits classifier"):
        images.load_digits_model(path)


def test_training_script_is_reproducible_bit_for_bit(tmp_path, load_script):
    script = load_script("train_digits")
    out = [str(tmp_path / f"{name}.safetensors") for name in "ab"]
    first = script.main(["conditional", "--steps", "3", "--out", out[0]])
    second = script.main(["conditional", "--steps", "3", "--out", out[1]])
    a, b = (checkpoints.load(path, "digits_model") for path in (first, second))
    assert a["ema"].keys() == b["ema"].keys()
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    assert torch.equal(a["losses"], b["losses"]) and len(a["losses"]) == 3
    assert a["train"]["steps"] == 3 and a["train"]["label_dropout"] > 0
    # ... and its first steps are those of the committed run (bit for bit on the machine that
    # trained it; another CPU may round its convolutions differently in the last bits)
    committed_path = checkpoints.packaged("digits_conditional")
    committed = checkpoints.load(committed_path, "digits_model")
    torch.testing.assert_close(a["losses"], committed["losses"][:3], rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", sorted(images.DIGITS_MODELS))
def test_committed_checkpoint_records_the_script_settings(name):
    path = checkpoints.packaged(f"digits_{name}")
    net, metadata = images.load_digits_model(path)
    spec = images.DIGITS_MODELS[name]
    assert metadata["name"] == name
    assert metadata["net"] == spec["net"]
    assert metadata["train"] == spec["train"]
    assert metadata["init_seed"] == spec["init_seed"]
    assert metadata["prediction"] == "eps" and metadata["threads"] == 1
    assert len(metadata["losses"]) == spec["train"]["steps"]
    assert path.stat().st_size < 4_000_000
    assert net.null_label == spec["net"]["num_classes"]


# --- argument checks ------------------------------------------------------------------------


def test_accuracy_refuses_labels_out_of_range_or_of_another_length(split):
    classifier = images.DigitsClassifier()
    x = split.test_images[:4]
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9, got values in -1\.\.99"):
        images.accuracy(classifier, x, torch.tensor([-1, -1, 99, 3]))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        images.accuracy(classifier, x, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="labels must be an integer torch.Tensor, got list"):
        images.accuracy(classifier, x, [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"images must have shape \(n, 1, 8, 8\) with n >= 1"):
        images.accuracy(classifier, x[:0], torch.tensor([], dtype=torch.int64))
    with pytest.raises(TypeError, match="classifier must be a DigitsClassifier"):
        images.accuracy(torch.nn.Identity(), x, torch.tensor([1, 2, 3, 4]))


def test_classifier_training_refuses_mismatched_or_empty_data(split):
    with pytest.raises(ValueError, match=r"labels must have shape \(12,\)"):
        images.train_classifier(split.train_images[:12], split.train_labels[:11], steps=1)
    with pytest.raises(ValueError, match=r"images must have shape \(n, 1, 8, 8\) with n >= 1"):
        images.train_classifier(split.train_images[:0], split.train_labels[:0], steps=1)
    with pytest.raises(ValueError, match=r"steps must be in 1\.\.100000000"):
        images.train_classifier(split.train_images[:4], split.train_labels[:4], steps=10**9)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        images.train_classifier(split.train_images[:4], split.train_labels[:4], lr=math.nan)


@pytest.mark.parametrize("fraction", [0.0, 1.0, math.nan, math.inf, -0.5])
def test_split_refuses_a_test_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"test_fraction must be a finite number in \(0, 1\)"):
        images.load_digits_split(test_fraction=fraction)


def test_scores_and_floor_refuse_bad_arguments_by_name(split):
    classifier = images.DigitsClassifier()
    x = split.test_images[:8]
    with pytest.raises(ValueError, match=r"images must have shape \(n, 1, 8, 8\) with n >= 4"):
        images.image_scores(x[:3], x, classifier, k=3)
    with pytest.raises(ValueError, match=r"reference must have shape \(n, 1, 8, 8\)"):
        images.image_scores(x, x[:2], classifier, k=3)
    with pytest.raises(ValueError, match=r"k must be in 1\.\."):
        images.image_scores(x, x, classifier, k=0)
    with pytest.raises(ValueError, match=r"repeats must be in 2\.\.1000"):
        images.real_floor(split, classifier, 10, repeats=10**6)
    with pytest.raises(TypeError, match="split must be a DigitsSplit"):
        images.real_floor({}, classifier, 10)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        images.real_floor(split, classifier, 10, generator=1)
    with pytest.raises(TypeError, match="settings must be a dict"):
        images.digits_recipe([("steps", 3)])


def test_loading_a_damaged_digits_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"broken\.safetensors is not a readable checkpoint"):
        images.load_digits_model(path)
    torch.save({"format": 1}, path)
    with pytest.raises(ValueError, match=r"broken\.safetensors was written by torch\.save"):
        images.load_digits_model(path)


def test_a_damaged_classifier_cache_is_retrained(split, tmp_path):
    first = images.digits_classifier(split, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("digits_classifier_*.safetensors")
    raw = bytearray(cached.read_bytes())
    raw[-10] ^= 0xFF  # a damaged weight: the SHA-256 no longer matches
    cached.write_bytes(bytes(raw))
    second = images.digits_classifier(split, cache_dir=tmp_path)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert cached.read_bytes() != bytes(raw)  # rewritten intact


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    labels=st.lists(st.integers(-3, 12), min_size=0, max_size=6),
    n=st.integers(0, 6),
)
def test_accuracy_refuses_by_name_or_returns_a_fraction(split, labels, n):
    classifier = images.DigitsClassifier()
    try:
        value = images.accuracy(classifier, split.test_images[:n], torch.tensor(labels).long())
    except (TypeError, ValueError) as error:
        assert str(error).split()[0] in {"images", "labels"}, str(error)
        return
    assert 0.0 <= value <= 1.0 and len(labels) == n >= 1
