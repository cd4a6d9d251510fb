"""Languages with an exact distribution: probabilities, entropies, validity, exact posteriors.

Monte Carlo checks use k = 4 standard errors (diffusion_core.metrics.assert_within).
"""

import math

import pytest
import torch

from diffusion_core.languages import (
    ArithmeticLanguage,
    MarkovLanguage,
    bits_per_token,
    book_languages,
    check_tokens,
    distinct_ngrams,
    random_markov_language,
)
from diffusion_core.metrics import assert_within, mean_and_standard_error


def markov(seed=0, vocab=4, order=2, length=6, allowed=2):
    generator = torch.Generator().manual_seed(seed)
    return random_markov_language(vocab, order, length, allowed, generator)


def test_markov_support_is_a_distribution_and_its_entropy_is_exact():
    language = markov()
    sequences, log_p = language.support()
    assert len(torch.unique(sequences, dim=0)) == len(sequences)
    assert math.isclose(float(log_p.exp().sum()), 1.0, rel_tol=1e-12)
    assert torch.allclose(language.log_prob(sequences), log_p)
    entropy = -float((log_p.exp() * log_p).sum())
    assert math.isclose(language.entropy(), entropy, rel_tol=1e-12)
    # each context allows two tokens: at most 2^L sequences, so H <= L log 2
    assert len(sequences) <= 2**language.length
    assert language.entropy() <= language.length * math.log(2) + 1e-12


def test_markov_samples_have_the_language_entropy():
    language = markov(seed=1, vocab=6, length=10, allowed=3)
    x = language.sample(20_000, torch.Generator().manual_seed(2))
    nll = -language.log_prob(x)
    assert bool(torch.isfinite(nll).all()) and bool(language.is_valid(x).all())
    mean, se = mean_and_standard_error(nll)
    assert_within(mean, language.entropy(), se, what="mean NLL of samples")


def test_markov_first_token_frequencies_follow_the_start_row():
    language = markov(seed=3, vocab=4, order=1, length=3, allowed=3)
    n = 40_000
    x = language.sample(n, torch.Generator().manual_seed(4))
    start_row = language.transition[language.vocab_size]  # the context "start"
    for v in range(language.vocab_size):
        p = float(start_row[v])
        frequency = float((x[:, 0] == v).double().mean())
        if 0 < p < 1:
            assert_within(frequency, p, math.sqrt(p * (1 - p) / n), what=f"P(x_1 = {v})")
        else:
            assert frequency == p


def test_forbidden_continuations_have_probability_zero():
    language = markov(vocab=4, order=1, length=2, allowed=1)
    start = language.transition[language.vocab_size]
    first = int(start.argmax())
    allowed = int(language.transition[first].argmax())
    other = (allowed + 1) % language.vocab_size
    x = torch.tensor([[first, allowed], [first, other]])
    assert language.is_valid(x).tolist() == [True, False]
    assert language.log_prob(x)[1] == -math.inf


def test_arithmetic_language():
    language = ArithmeticLanguage(digits=2)
    assert language.length == 9 and language.vocab_size == 12
    x = language.encode(["17+25=042", "17+25=043", "17=25+042", "99+99=198"])
    assert language.is_valid(x).tolist() == [True, False, False, True]
    assert language.decode(x[:1]) == ["17+25=042"]
    samples = language.sample(500, torch.Generator().manual_seed(0))
    assert bool(language.is_valid(samples).all())
    sequences, log_p = language.support()
    assert len(sequences) == 10_000 and bool(language.is_valid(sequences).all())
    assert math.isclose(float(log_p.exp().sum()), 1.0, rel_tol=1e-12)
    assert math.isclose(language.entropy_per_token(), math.log2(10_000) / 9, rel_tol=1e-12)


def test_posterior_marginals_of_a_fully_masked_or_fully_seen_sequence():
    language = markov(seed=5, vocab=3, order=1, length=4, allowed=2)
    vocab, length = language.vocab_size, language.length
    masked = torch.ones(1, length, vocab, dtype=torch.float64)
    marginals = language.posterior_marginals(masked)
    assert torch.allclose(marginals[0, 0], language.transition[vocab])  # p(x_1) = start row
    x = language.sample(3, torch.Generator().manual_seed(6))
    seen = torch.nn.functional.one_hot(x, vocab).double()
    assert torch.equal(language.posterior_marginals(seen), seen)


def test_posterior_marginals_against_conditioned_samples():
    """p(x_2 | x_1 = a, x_4 = b) against the frequency among samples with x_1 = a, x_4 = b."""
    language = markov(seed=7, vocab=3, order=1, length=4, allowed=2)
    x = language.sample(60_000, torch.Generator().manual_seed(8))
    a, b = int(x[0, 0]), int(x[0, 3])
    likelihood = torch.ones(1, 4, 3, dtype=torch.float64)
    likelihood[0, 0] = torch.nn.functional.one_hot(torch.tensor(a), 3)
    likelihood[0, 3] = torch.nn.functional.one_hot(torch.tensor(b), 3)
    marginal = language.posterior_marginals(likelihood)[0, 1]
    kept = x[(x[:, 0] == a) & (x[:, 3] == b)]
    for v in range(3):
        p, n = float(marginal[v]), len(kept)
        frequency = float((kept[:, 1] == v).double().mean())
        if 0 < p < 1:
            assert_within(frequency, p, math.sqrt(p * (1 - p) / n), what=f"P(x_2 = {v} | ...)")
        else:
            assert frequency == p


def test_distinct_ngrams_and_bits_per_token():
    x = torch.tensor([[0, 1, 0, 1], [0, 1, 0, 1]])
    assert distinct_ngrams(x, 2) == 2 / 6  # (0, 1) and (1, 0) among six bigrams
    assert distinct_ngrams(x, 4) == 1 / 2
    assert math.isclose(bits_per_token(8 * math.log(2), 4), 2.0)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.tensor([[0, 5]]), "x must hold token ids in 0..3"),
        (torch.tensor([[-1, 0]]), "x must hold token ids in 0..3"),
        (torch.zeros(2, 0, dtype=torch.int64), "x must hold at least one sequence"),
        (torch.zeros(0, 3, dtype=torch.int64), "x must hold at least one sequence"),
        (torch.zeros(3, dtype=torch.int64), r"x must have shape \(n, L\)"),
    ],
)
def test_bad_tokens_are_refused_by_name(x, message):
    with pytest.raises(ValueError, match=message):
        check_tokens("x", x, 4)


def test_bad_arguments_are_refused_by_name():
    language = markov()
    with pytest.raises(ValueError, match="x must have shape"):
        language.log_prob(torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must hold token ids"):
        language.log_prob(torch.full((1, 6), 4))
    with pytest.raises(TypeError, match="x must hold integer token ids"):
        language.log_prob(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="transition must have non-negative rows"):
        MarkovLanguage(torch.full((5, 4), 0.3, dtype=torch.float64), 1, 3)
    with pytest.raises(ValueError, match="allowed must be in 1..4"):
        random_markov_language(4, 1, 3, 5, torch.Generator())
    with pytest.raises(ValueError, match="likelihood must have shape"):
        language.posterior_marginals(torch.ones(1, 6, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="texts\\[0\\] must be a string of 9 tokens"):
        ArithmeticLanguage().encode(["1+1=2"])


def test_book_languages_are_the_documented_ones():
    languages = book_languages()
    markov, arithmetic = languages["markov"], languages["arithmetic"]
    assert (markov.vocab_size, markov.order, markov.length) == (8, 2, 12)
    assert int((markov.transition > 0).sum(1).unique()) == 3  # three allowed continuations
    assert arithmetic.digits == 2 and arithmetic.length == 9
    again = book_languages()["markov"]
    assert torch.equal(again.transition, markov.transition)  # drawn from a fixed seed
