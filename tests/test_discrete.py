"""Discrete diffusion: D3PM's processes in closed form, the masked ELBO, samplers, networks.

Monte Carlo checks use k = 4 standard errors (diffusion_core.metrics.assert_within); a correct
implementation fails one with probability about 6e-5.
"""

import itertools
import math

import pytest
import torch

from diffusion_core import checkpoints
from diffusion_core.discrete import (
    DiscreteProcess,
    TokenTransformer,
    absorbing_elbo_weights,
    autoregressive_nll,
    autoregressive_sample,
    d3pm_sample,
    exact_denoiser,
    load_token_models,
    mask_alpha,
    mask_weight,
    masked_draw,
    masked_nelbo,
    masked_q_sample,
    masked_sample,
)
from diffusion_core.languages import ArithmeticLanguage, random_markov_language
from diffusion_core.losses import AutoregressiveLoss, MaskedDiffusionLoss
from diffusion_core.metrics import assert_within, mean_and_standard_error
from diffusion_core.train import TrainConfig, train

KINDS = ("uniform", "absorbing")


def process(kind, vocab=4, T=6):
    return DiscreteProcess.linear(kind, vocab, T)


def assert_frequencies(samples, probs, what):
    """Each state's frequency among ``samples`` (1-D) within 4 binomial SEs of ``probs``."""
    n = samples.numel()
    for state, p in enumerate(probs.tolist()):
        frequency = float((samples == state).double().mean())
        if 0 < p < 1:
            assert_within(frequency, p, math.sqrt(p * (1 - p) / n), what=f"{what}, state {state}")
        else:
            assert frequency == p, f"{what}, state {state}: {frequency} != {p}"


@pytest.mark.parametrize("kind", KINDS)
def test_transition_matrices_are_stochastic_and_compose(kind):
    chain = process(kind)
    product = torch.eye(chain.states, dtype=torch.float64)
    for t in range(1, chain.T + 1):
        step = chain.step_matrix(t)
        assert bool((step >= 0).all())
        assert torch.allclose(step.sum(1), torch.ones(chain.states, dtype=torch.float64))
        product = product @ step
        cumulative = chain.cumulative_matrix(t)
        assert bool((cumulative >= 0).all())
        assert torch.allclose(cumulative.sum(1), torch.ones(chain.states, dtype=torch.float64))
        assert torch.allclose(product, cumulative, atol=1e-12)  # Qbar_t = Q_1 ... Q_t


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [1, 3, 6])
def test_marginal_against_monte_carlo(kind, t):
    """q(x_t | x_0) in closed form against x_0 pushed through t one-step draws."""
    chain, n = process(kind), 40_000
    generator = torch.Generator().manual_seed(t)
    x = torch.full((n, 1), 2)
    for s in range(1, t + 1):
        x = torch.multinomial(chain.step_matrix(s)[x[:, 0]], 1, generator=generator)
    probs = chain.q_probs(torch.tensor([[2]]), t)[0, 0]
    assert_frequencies(x[:, 0], probs, f"{kind} q(x_{t} | x_0)")
    drawn = chain.q_sample(torch.full((1, n), 2), t, generator)[0]
    assert_frequencies(drawn, probs, f"{kind} q_sample at {t}")


@pytest.mark.parametrize("kind", KINDS)
def test_posterior_against_monte_carlo(kind):
    """q(x_{t-1} | x_t, x_0): simulate (x_{t-1}, x_t) from x_0, keep the draws with each x_t."""
    chain, t, n, x0 = process(kind), 4, 200_000, 1
    generator = torch.Generator().manual_seed(0)
    previous = chain.q_sample(torch.full((1, n), x0), t - 1, generator)[0]
    current = torch.multinomial(chain.step_matrix(t)[previous], 1, generator=generator)[:, 0]
    for state in range(chain.states):
        kept = previous[current == state]
        if len(kept) < 1000:
            continue
        posterior = chain.posterior_probs(torch.tensor([[state]]), torch.tensor([[x0]]), t)
        assert_frequencies(kept, posterior[0, 0], f"{kind} posterior at x_t = {state}")


def test_absorbing_process_ends_all_mask_and_uniform_ends_uniform():
    absorbing, uniform = process("absorbing"), process("uniform")
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, (50, 7), generator=generator)
    assert bool((absorbing.q_sample(x0, absorbing.T, generator) == absorbing.mask_id).all())
    assert bool((absorbing.prior_sample(5, 7, generator) == 4).all())
    assert torch.allclose(uniform.cumulative_matrix(uniform.T), torch.full((4, 4), 0.25).double())
    assert torch.equal(absorbing.cumulative_matrix(0), torch.eye(5, dtype=torch.float64))


def test_masked_process_in_continuous_time():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    for schedule in ("linear", "cosine"):
        alpha = mask_alpha(t, schedule)
        assert alpha[0] == 1 and abs(float(alpha[-1])) < 1e-15
        # the weight is -alpha' / (1 - alpha); alpha' by central differences
        s, h = torch.tensor([0.3, 0.7], dtype=torch.float64), 1e-6
        derivative = (mask_alpha(s + h, schedule) - mask_alpha(s - h, schedule)) / (2 * h)
        expected = -derivative / (1 - mask_alpha(s, schedule))
        assert torch.allclose(mask_weight(s, schedule), expected, rtol=1e-7)
    n, generator = 100_000, torch.Generator().manual_seed(0)
    xt = masked_q_sample(torch.zeros(1, n, dtype=torch.int64), torch.tensor([0.3]), 5, generator)
    frequency = float((xt == 5).double().mean())
    assert_within(frequency, 0.3, math.sqrt(0.3 * 0.7 / n), what="mask frequency at t = 0.3")


# --- the ELBO ---------------------------------------------------------------------------------


def random_denoiser(vocab, length, seed=0):
    """A fixed arbitrary denoiser: logits looked up from a random table keyed by x_t."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn((vocab + 1) ** length, length, vocab, generator=generator)
    powers = (vocab + 1) ** torch.arange(length)

    def denoise(xt, t):
        return table[(xt * powers).sum(1)].double()

    return denoise


def test_masked_elbo_equals_the_direct_sum_of_kl_terms():
    """Exact on V = 2 tokens, L = 2 positions, T = 4 steps, by enumerating every x_t: the ELBO
    of D3PM's absorbing process (sum of KL terms and the reconstruction term) equals the
    weighted masked cross-entropy, with a denoiser that is not the true one."""
    vocab, length = 2, 2
    chain = DiscreteProcess("absorbing", vocab, torch.tensor([1.0, 0.8, 0.5, 0.15, 0.0]))
    denoiser = random_denoiser(vocab, length)
    states = torch.tensor(list(itertools.product(range(vocab + 1), repeat=length)))
    weights = absorbing_elbo_weights(chain)
    for x0 in torch.tensor(list(itertools.product(range(vocab), repeat=length))):
        x0s = x0.expand(len(states), length)
        direct = weighted = 0.0
        for t in range(1, chain.T + 1):
            q_t = chain.q_probs(x0s, t).gather(2, states[..., None])[..., 0].prod(1)  # q(x_t|x0)
            probs = torch.softmax(denoiser(states, None), -1)
            model = chain.reverse_probs(states, probs, t)
            true = chain.posterior_probs(states, x0s, t)
            if t == 1:  # reconstruction -log p(x_0 | x_1)
                term = -model.gather(2, x0s[..., None])[..., 0].log().sum(1)
            else:
                ratio = torch.where(true > 0, true * (true / model).log(), 0.0)
                term = ratio.sum((1, 2))
            reachable = q_t > 0  # the x_t that x_0 can produce
            direct += float((q_t * term)[reachable].sum())
            masked = states == chain.mask_id
            cross_entropy = -(probs.gather(2, x0s[..., None])[..., 0].log() * masked).sum(1)
            weighted += float(weights[t - 1] * (q_t * cross_entropy)[reachable].sum())
        assert math.isclose(direct, weighted, rel_tol=1e-12), (x0, direct, weighted)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("estimator", ["time", "count"])
def test_exact_denoiser_gives_an_elbo_at_the_entropy(schedule, estimator):
    """With the true p(x_0^i | x_t), the masked ELBO is tight: E[NELBO] = H(X), whatever the
    schedule and estimator."""
    generator = torch.Generator().manual_seed(0)
    language = random_markov_language(3, 2, 6, 2, generator)
    x0 = language.sample(4000, generator)
    denoiser = exact_denoiser(language)
    nelbo = masked_nelbo(denoiser, x0, language.vocab_size, generator, schedule, estimator)
    mean, se = mean_and_standard_error(nelbo)
    assert_within(mean, language.entropy(), se, what=f"NELBO ({schedule}, {estimator})")


def test_count_estimator_masks_exactly_k_uniform_positions():
    n, length = 20_000, 5
    x0 = torch.zeros(n, length, dtype=torch.int64)
    t, weight, xt = masked_draw(x0, 3, torch.Generator().manual_seed(0), estimator="count")
    k = (xt == 3).sum(1)
    assert torch.equal(k.double(), t * length) and torch.allclose(weight, length / k.double())
    assert int(k.min()) == 1 and int(k.max()) == length
    for count in range(1, length + 1):  # k uniform on 1..L
        frequency = float((k == count).double().mean())
        se = math.sqrt(0.2 * 0.8 / n)
        assert_within(frequency, 0.2, se, what=f"P(k = {count})")
    masked_first = float((xt[:, 0] == 3).double().mean())  # E[k] / L = 3 / 5
    assert_within(masked_first, 0.6, math.sqrt(0.24 / n), what="P(position 0 masked)")


def test_exact_denoiser_of_the_uniform_process_knows_the_clean_data():
    language = ArithmeticLanguage(digits=1)
    chain = process("uniform", vocab=12, T=10)
    x0 = language.sample(5, torch.Generator().manual_seed(0))
    logp = exact_denoiser(language, chain)(x0, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(logp.argmax(-1), x0)
    assert torch.allclose(logp.exp().amax(-1), torch.ones(1).double())


# --- samplers ---------------------------------------------------------------------------------


def spy(denoiser, seen):
    def call(xt, t):
        seen.append(xt.clone())
        return denoiser(xt, t)

    return call


@pytest.mark.parametrize("steps", [1, 3, 6, 50])
def test_masked_sampler_reveals_every_token_exactly_once(steps):
    vocab, length, n = 2, 6, 200
    seen = []
    denoiser = spy(lambda xt, t: torch.zeros(*xt.shape, vocab), seen)
    prompt = torch.full((n, length), vocab)
    x = masked_sample(denoiser, prompt, vocab, steps, torch.Generator().manual_seed(0))
    assert bool((x < vocab).all())  # nothing left masked
    assert len(seen) <= steps
    states = [*seen, x]
    for before, after in itertools.pairwise(states):
        revealed = before != vocab
        assert torch.equal(after[revealed], before[revealed])  # a revealed token never changes
    assert bool((seen[0] == vocab).all())  # the first call sees no token


def test_masked_sampler_with_t_steps_reveals_tokens_at_the_schedule_rate():
    """From t to s each masked token is revealed with probability (alpha(s) - alpha(t)) /
    (1 - alpha(t)); with the linear schedule and T steps, a token's reveal step is uniform."""
    vocab, length, n, steps = 2, 4, 5000, 4
    seen = []
    denoiser = spy(lambda xt, t: torch.zeros(*xt.shape, vocab), seen)
    masked_sample(denoiser, torch.full((n, length), vocab), vocab, steps, torch.Generator())
    counts = [(s == vocab).double().mean() for s in seen]
    for k, masked in enumerate(counts):
        assert_within(float(masked), 1 - k / steps, math.sqrt(0.25 / (n * length)) * 2, what=f"{k}")


def test_infilling_never_changes_the_given_tokens():
    vocab, length, n = 12, 9, 64
    net = TokenTransformer(vocab, length, dim=16, layers=1, heads=2)
    generator = torch.Generator().manual_seed(0)
    given = ArithmeticLanguage(2).sample(n, generator)
    keep = torch.rand(n, length, generator=generator) < 0.5
    prompt = torch.where(keep, given, vocab)
    for steps in (1, 5):
        x = masked_sample(net, prompt, vocab, steps, generator)
        assert torch.equal(x[keep], given[keep]) and bool((x < vocab).all())


def test_d3pm_sampler_with_the_exact_denoiser_of_a_one_token_language():
    """With one position the reverse chain is exact: samples follow the language."""
    generator = torch.Generator().manual_seed(1)
    language = random_markov_language(4, 1, 1, 3, generator)
    target = language.transition[language.vocab_size]
    for kind in KINDS:
        chain = process(kind, vocab=4, T=5)
        x = d3pm_sample(exact_denoiser(language, chain), chain, 20_000, 1, generator)
        assert_frequencies(x[:, 0], target, f"{kind} d3pm samples")


# --- the autoregressive reference -------------------------------------------------------------


def test_autoregressive_model_is_a_normalised_causal_distribution():
    torch.manual_seed(0)
    vocab, length = 3, 3
    net = TokenTransformer(vocab, length, dim=16, layers=2, heads=2, causal=True)
    everything = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    with torch.no_grad():
        total = autoregressive_nll(net, everything).double().neg().exp().sum()
    assert math.isclose(float(total), 1.0, rel_tol=1e-5)
    x = autoregressive_sample(net, everything[:4, :1], length, torch.Generator())
    assert torch.equal(x[:, :1], everything[:4, :1]) and x.shape == (4, length)
    start = torch.full((1, length), vocab)
    a = torch.tensor([[vocab, 0, 0]])
    b = torch.tensor([[vocab, 0, 2]])  # differs at the last position only
    assert torch.equal(net(a)[:, :2], net(b)[:, :2])
    assert net(start).shape == (1, length, vocab)


def test_same_size_for_diffusion_and_autoregression():
    count = [
        sum(p.numel() for p in TokenTransformer(12, 9, causal=c).parameters())
        for c in (False, True)
    ]
    assert count[0] == count[1]


# --- bad input --------------------------------------------------------------------------------


def test_bad_input_is_refused_by_name():
    vocab = 4
    net = TokenTransformer(vocab, 5, dim=8, layers=1, heads=2)
    generator = torch.Generator()
    good = torch.zeros(2, 5, dtype=torch.int64)
    with pytest.raises(ValueError, match="x0 must hold token ids in 0..3"):
        masked_nelbo(net, torch.full((2, 5), 7), vocab, generator)
    with pytest.raises(ValueError, match="x0 must hold data tokens 0..3; it holds the mask id 4"):
        masked_nelbo(net, torch.full((2, 5), 4), vocab, generator)
    with pytest.raises(ValueError, match="x0 must hold at least one sequence"):
        masked_nelbo(net, torch.zeros(2, 0, dtype=torch.int64), vocab, generator)
    with pytest.raises(ValueError, match="prompt must hold token ids in 0..4"):
        masked_sample(net, torch.full((2, 5), 5), vocab, 3, generator)
    with pytest.raises(ValueError, match="prompt must hold at least one sequence"):
        masked_sample(net, torch.zeros(0, 5, dtype=torch.int64), vocab, 3, generator)
    with pytest.raises(ValueError, match="steps must be in 1"):
        masked_sample(net, good, vocab, 0, generator)
    with pytest.raises(ValueError, match="x must hold token ids in 0..4"):
        net(torch.full((1, 5), 9))
    with pytest.raises(ValueError, match="vocab_size must be in 2"):
        DiscreteProcess.linear("absorbing", 1, 5)
    with pytest.raises(ValueError, match="kind must be one of"):
        DiscreteProcess.linear("gaussian", 4, 5)
    with pytest.raises(ValueError, match="alpha_bars must be non-increasing"):
        DiscreteProcess("uniform", 4, torch.tensor([1.0, 0.5, 0.7, 0.0]))
    with pytest.raises(ValueError, match="t must lie in 1..6"):
        process("uniform").posterior_probs(good, good, 0)
    with pytest.raises(ValueError, match="x0 must hold token ids in 0..3"):
        process("absorbing").q_probs(torch.full((1, 2), 4), 1)
    with pytest.raises(ValueError, match="t must lie in"):
        mask_weight(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="schedule must be one of"):
        mask_alpha(torch.tensor([0.5]), "log")


# --- the packaged models ----------------------------------------------------------------------


def test_text_training_script_is_reproducible_and_matches_the_packaged_run(tmp_path, load_script):
    script = load_script("train_text")
    out = [tmp_path / f"{name}.safetensors" for name in "ab"]
    for path in out:
        script.main(["--steps", "2", "--out", str(path)])
    a, b = (load_token_models(path)[1] for path in out)
    nets_a = load_token_models(out[0])[0]
    nets_b = load_token_models(out[1])[0]
    packaged_nets, packaged = load_token_models(checkpoints.packaged("text_models"))
    assert (
        set(nets_a)
        == set(packaged_nets)
        == {
            f"{language}_{kind}"
            for language in ("markov", "arithmetic")
            for kind in ("diffusion", "autoregressive")
        }
    )
    assert packaged["train"] == script.SETTINGS
    for name in nets_a:
        for key, value in nets_a[name].state_dict().items():
            assert torch.equal(value, nets_b[name].state_dict()[key]), (name, key)
        losses = a["models"][name]["losses"]
        assert torch.equal(losses, b["models"][name]["losses"]) and len(losses) == 2
        # the packaged run's first steps, bit for bit on the machine that trained it
        first = packaged["models"][name]["losses"][:2]
        torch.testing.assert_close(losses, first, rtol=1e-5, atol=0)
        # equal sizes for the diffusion model and its autoregressive reference
        assert packaged["models"][name]["parameters"] == sum(
            p.numel() for p in packaged_nets[name].parameters()
        )
    for language in ("markov", "arithmetic"):
        sizes = {
            packaged["models"][f"{language}_{k}"]["parameters"]
            for k in ("diffusion", "autoregressive")
        }
        assert len(sizes) == 1


# --- the objectives ---------------------------------------------------------------------------


def test_objectives_train_with_the_one_loop_and_refuse_bad_batches():
    language = ArithmeticLanguage(digits=1)
    data = language.sample(256, torch.Generator().manual_seed(0)).float()
    config = TrainConfig(steps=3, batch_size=16, ema_decay=None)
    for causal, objective in (
        (False, MaskedDiffusionLoss(12, estimator="count")),
        (False, MaskedDiffusionLoss(12)),
        (True, AutoregressiveLoss(12)),
    ):
        torch.manual_seed(0)
        net = TokenTransformer(12, language.length, dim=8, layers=1, heads=2, causal=causal)
        run = train(net, data, objective, config, progress=False, device="cpu")
        assert len(run.losses) == 3 and all(math.isfinite(v) for v in run.losses)
        with pytest.raises(ValueError, match="batch must hold whole token ids 0..11"):
            objective(net, data[:4] + 0.5, None, torch.Generator())
        with pytest.raises(ValueError, match="batch must hold whole token ids 0..11"):
            objective(net, data[:4] + 12, None, torch.Generator())
    with pytest.raises(ValueError, match="estimator must be one of"):
        MaskedDiffusionLoss(12, estimator="order")
