"""Diffusion on tokens: discrete forward processes, their ELBOs, a denoiser and samplers.

Tokens have no geometry for Gaussian noise to blur, so the forward process is a Markov chain on
the vocabulary itself, applied to each position independently (Austin et al. 2021, D3PM). Row
vectors are distributions; a step multiplies by a K x K transition matrix

    Q_t = (1 - beta_t) I + beta_t 1 m^T,          q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t),

which keeps the token with probability 1 - beta_t and otherwise replaces it by a draw from the
noise distribution m. Products of such matrices keep the form, so the marginal is closed
(D3PM, Eq. 3 and App. A.2):

    Qbar_t = Q_1 ... Q_t = alpha_bar_t I + (1 - alpha_bar_t) 1 m^T,
    alpha_bar_t = prod_{s <= t} (1 - beta_s),

and so is the posterior, by Bayes' rule (D3PM, Eq. 3):

    q(x_{t-1} | x_t, x_0) = Q_t[x_{t-1}, x_t] Qbar_{t-1}[x_0, x_{t-1}] / Qbar_t[x_0, x_t].

:class:`DiscreteProcess` holds both kinds of D3PM: "uniform" (m = 1/V over the V tokens) and
"absorbing" (K = V + 1 states, m the indicator of a mask token, id V: a token, once masked,
stays masked). Its reverse step :meth:`DiscreteProcess.reverse_probs` mixes the posterior over
a denoiser's prediction of x_0, and :func:`d3pm_sample` runs it from t = T down to 0.

The masked process in continuous time (Sahoo et al. 2024, MDLM; Shi et al. 2024). Each token is
kept with probability alpha(t) and masked otherwise, alpha decreasing from alpha(0) = 1 to
alpha(1) = 0 (:data:`MASK_SCHEDULES`). With a denoiser that never predicts the mask and leaves
revealed tokens alone, every KL term of the ELBO reduces to a cross-entropy on the masked
positions, and the negative ELBO of a sequence x_0 is (MDLM Eq. 10, Shi et al. Eq. 5)

    NELBO(x_0) = int_0^1 w(t) E_q [ sum_{i: x_t^i = mask} -log p(x_0^i | x_t) ] dt,
    w(t) = -alpha'(t) / (1 - alpha(t)),

estimated by :func:`masked_nelbo` with one t per sequence. With T discrete steps the weight is
(alpha_bar_{t-1} - alpha_bar_t) / (1 - alpha_bar_t) (:func:`absorbing_elbo_weights`). The
reverse process reveals each masked token, between times t > s, with probability
(alpha(s) - alpha(t)) / (1 - alpha(t)), drawing it from the denoiser (:func:`masked_sample`);
tokens given in a prompt are never masked, which is how infilling and completion work.

Denoisers. Every sampler and ELBO here calls ``denoiser(x_t, t)`` with token ids x_t (n, L)
(the mask id V where masked) and t (n,) float64 in [0, 1] (the step over T for D3PM), and reads
logits (n, L, V) over the V data tokens: a prediction of p(x_0^i | x_t) at every position.
:class:`TokenTransformer` is the small network of the book (bidirectional for diffusion,
causal for the autoregressive reference of :func:`autoregressive_nll`), and
:func:`exact_denoiser` the true posterior of a language of :mod:`diffusion_core.languages`.
A denoiser that does not depend on t is enough for the masked process: the true p(x_0 | x_t)
depends on which tokens are masked, not on when (Ou et al. 2025).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_core import checkpoints
from diffusion_core._validation import (
    check_callable,
    check_positive_int,
    check_torch_generator,
)
from diffusion_core.languages import MAX_LENGTH, MAX_VOCAB, Language, check_tokens
from diffusion_core.text import _EncoderLayer

__all__ = [
    "ESTIMATORS",
    "MASK_SCHEDULES",
    "PROCESS_KINDS",
    "DiscreteProcess",
    "TokenTransformer",
    "absorbing_elbo_weights",
    "autoregressive_nll",
    "autoregressive_sample",
    "d3pm_sample",
    "exact_denoiser",
    "load_token_models",
    "mask_alpha",
    "mask_weight",
    "masked_cross_entropy",
    "masked_draw",
    "masked_nelbo",
    "masked_q_sample",
    "masked_sample",
]

PROCESS_KINDS = ("uniform", "absorbing")
ESTIMATORS = ("time", "count")
MASK_SCHEDULES = ("linear", "cosine")
MAX_STEPS = 1_000_000
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- D3PM: discrete time, uniform or absorbing ------------------------------------------------


class DiscreteProcess:
    """A D3PM forward process on V tokens in T steps (see the module docstring).

    ``kind``: "uniform" (K = V states, m uniform) or "absorbing" (K = V + 1 states, the mask
    id V, m its indicator). ``alpha_bars``: float tensor (T + 1,), alpha_bar_0 = 1, non-increasing,
    positive before T; alpha_bar_T = 0 makes x_T pure noise (all mask, or uniform).
    """

    def __init__(self, kind: str, vocab_size: int, alpha_bars: torch.Tensor):
        if not isinstance(kind, str) or kind not in PROCESS_KINDS:
            raise ValueError(f"kind must be one of {PROCESS_KINDS}, got {kind!r}")
        self.kind = kind
        self.vocab_size = check_positive_int("vocab_size", vocab_size, minimum=2, maximum=MAX_VOCAB)
        if not isinstance(alpha_bars, torch.Tensor) or not alpha_bars.is_floating_point():
            raise TypeError("alpha_bars must be a floating-point tensor (T + 1,)")
        a = alpha_bars.double()
        if a.ndim != 1 or a.shape[0] < 2 or a.shape[0] > MAX_STEPS + 1:
            raise ValueError(f"alpha_bars must have shape (T + 1,), 1 <= T <= {MAX_STEPS}")
        if not bool(torch.isfinite(a).all()) or a[0] != 1 or bool((a < 0).any()):
            raise ValueError("alpha_bars must be finite, in [0, 1], starting at 1")
        if bool((a[1:] > a[:-1]).any()) or bool((a[:-1] <= 0).any()):
            raise ValueError("alpha_bars must be non-increasing and positive before the last step")
        self.alpha_bars = a
        self.states = vocab_size + (kind == "absorbing")
        self.mask_id = vocab_size if kind == "absorbing" else None
        m = torch.zeros(self.states, dtype=torch.float64)
        if kind == "uniform":
            m += 1.0 / vocab_size
        else:
            m[vocab_size] = 1.0
        self.noise = m

    @classmethod
    def linear(cls, kind: str, vocab_size: int, T: int) -> DiscreteProcess:
        """alpha_bar_t = 1 - t / T: for "absorbing", beta_t = 1 / (T - t + 1) (D3PM, Sec. 3.1)."""
        T = check_positive_int("T", T, maximum=MAX_STEPS)
        return cls(kind, vocab_size, 1.0 - torch.arange(T + 1, dtype=torch.float64) / T)

    @property
    def T(self) -> int:
        return self.alpha_bars.shape[0] - 1

    @property
    def betas(self) -> torch.Tensor:
        """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, t = 1..T, shape (T,)."""
        return 1.0 - self.alpha_bars[1:] / self.alpha_bars[:-1]

    def step_matrix(self, t: int) -> torch.Tensor:
        """Q_t = (1 - beta_t) I + beta_t 1 m^T, (K, K), for t in 1..T."""
        t = check_positive_int("t", t, maximum=self.T)
        beta = self.betas[t - 1]
        return (1 - beta) * torch.eye(self.states, dtype=torch.float64) + beta * self.noise

    def cumulative_matrix(self, t: int) -> torch.Tensor:
        """Qbar_t = alpha_bar_t I + (1 - alpha_bar_t) 1 m^T, (K, K), for t in 0..T."""
        t = check_positive_int("t", t, minimum=0, maximum=self.T)
        a = self.alpha_bars[t]
        return a * torch.eye(self.states, dtype=torch.float64) + (1 - a) * self.noise

    def q_probs(self, x0: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x_0) = Cat(x_0 Qbar_t) at every position, (n, L, K) float64."""
        x0 = check_tokens("x0", x0, self.vocab_size)
        a = self.alpha_bars[self._steps(t, x0.shape[0], minimum=0)][:, None, None]
        return a * F.one_hot(x0, self.states) + (1 - a) * self.noise

    def q_sample(self, x0: torch.Tensor, t, generator: torch.Generator) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0), (n, L) int64."""
        check_torch_generator("generator", generator)
        return _categorical(self.q_probs(x0, t), generator)

    def posterior_probs(self, xt: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """q(x_{t-1} | x_t, x_0), (n, L, K) float64, for t in 1..T (D3PM, Eq. 3)."""
        x0 = check_tokens("x0", x0, self.vocab_size)
        return self.reverse_probs(xt, F.one_hot(x0, self.vocab_size).double(), t)

    def reverse_probs(self, xt: torch.Tensor, x0_probs: torch.Tensor, t) -> torch.Tensor:
        """p(x_{t-1} | x_t) = sum_{x_0} p(x_0 | x_t) q(x_{t-1} | x_t, x_0), (n, L, K) float64.

        ``x0_probs`` (n, L, V) is a prediction of x_0 (a distribution over the data tokens).
        Values of x_0 that could not have produced x_t (Qbar_t[x_0, x_t] = 0) get no weight;
        if a row puts all its weight there, the consistent values share it equally.
        """
        xt = check_tokens("xt", xt, self.states)
        if not isinstance(x0_probs, torch.Tensor) or not x0_probs.is_floating_point():
            raise TypeError("x0_probs must be a floating-point tensor (n, L, V)")
        if x0_probs.shape != (*xt.shape, self.vocab_size):
            raise ValueError(
                f"x0_probs must have shape {(*xt.shape, self.vocab_size)}, got "
                f"{tuple(x0_probs.shape)}"
            )
        n = xt.shape[0]
        steps = self._steps(t, n)
        a_t = self.alpha_bars[steps][:, None, None]
        a_prev = self.alpha_bars[steps - 1][:, None, None]
        beta = 1 - a_t / a_prev
        p = F.pad(x0_probs.double(), (0, self.states - self.vocab_size))
        onehot_t = F.one_hot(xt, self.states).double()
        m_t = self.noise[xt][..., None]  # m[x_t]
        column = (1 - beta) * onehot_t + beta * m_t  # Q_t[x_{t-1}, x_t] over x_{t-1}
        likelihood = a_t * onehot_t + (1 - a_t) * m_t  # Qbar_t[x_0, x_t] over x_0
        consistent = likelihood > 0
        weights = torch.where(consistent, p / likelihood.clamp_min(1e-300), 0.0)
        empty = weights.sum(-1, keepdim=True) == 0
        weights = torch.where(empty, consistent.double(), weights)
        mixed = a_prev * weights + (1 - a_prev) * weights.sum(-1, keepdim=True) * self.noise
        out = column * mixed
        return out / out.sum(-1, keepdim=True)

    def prior_sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """x_T ~ Cat(m) at every position: all masks, or uniform tokens."""
        n = check_positive_int("n", n)
        length = check_positive_int("length", length, maximum=MAX_LENGTH)
        check_torch_generator("generator", generator)
        return _categorical(self.noise.expand(n, length, self.states), generator)

    def _steps(self, t, n: int, minimum: int = 1) -> torch.Tensor:
        """``t`` (an int, or int tensor (n,)) as int64 (n,), checked to lie in minimum..T."""
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.full((n,), t)
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError("t must be an int or an integer tensor (n,)")
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"t must be an int or have shape ({n},), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < minimum or int(t.max()) > self.T):
            raise ValueError(
                f"t must lie in {minimum}..{self.T}, got values in {int(t.min())}..{int(t.max())}"
            )
        return t.long()

    def __repr__(self) -> str:
        return f"DiscreteProcess({self.kind!r}, vocab_size={self.vocab_size}, T={self.T})"


def absorbing_elbo_weights(process: DiscreteProcess) -> torch.Tensor:
    """w_t = (alpha_bar_{t-1} - alpha_bar_t) / (1 - alpha_bar_t), t = 1..T: the weight of the
    masked cross-entropy in the step-t KL term of the absorbing process's ELBO (float64, (T,))."""
    if not isinstance(process, DiscreteProcess) or process.kind != "absorbing":
        raise TypeError("process must be an absorbing DiscreteProcess")
    a = process.alpha_bars
    return (a[:-1] - a[1:]) / (1 - a[1:])


@torch.no_grad()
def d3pm_sample(
    denoiser: Denoiser, process: DiscreteProcess, n: int, length: int, generator: torch.Generator
) -> torch.Tensor:
    """Ancestral sampling of D3PM: x_T ~ Cat(m), then x_{t-1} ~ p(x_{t-1} | x_t) for t = T..1,
    the reverse step mixing the posterior over the denoiser's prediction of x_0 (D3PM, Eq. 4).
    Returns (n, length) int64 data tokens."""
    check_callable("denoiser", denoiser, "denoiser(x_t, t) -> logits (n, L, V)")
    if not isinstance(process, DiscreteProcess):
        raise TypeError(f"process must be a DiscreteProcess, got {type(process).__name__}")
    x = process.prior_sample(n, length, generator)
    for t in range(process.T, 0, -1):
        time = torch.full((n,), t / process.T, dtype=torch.float64)
        probs = _denoise(denoiser, x, time, process.vocab_size)
        x = _categorical(process.reverse_probs(x, probs, t), generator)
    return x


# --- the masked process in continuous time ----------------------------------------------------


def mask_alpha(t: torch.Tensor, schedule: str = "linear") -> torch.Tensor:
    """alpha(t), the probability that a token is still unmasked at time t in [0, 1]:
    1 - t ("linear") or cos(pi t / 2) ("cosine")."""
    t = _check_time(t)
    _check_schedule(schedule)
    return 1 - t if schedule == "linear" else torch.cos(math.pi * t / 2)


def mask_weight(t: torch.Tensor, schedule: str = "linear") -> torch.Tensor:
    """-alpha'(t) / (1 - alpha(t)), the ELBO's weight on the masked cross-entropy: 1 / t
    ("linear"), (pi / 2) sin(pi t / 2) / (1 - cos(pi t / 2)) ("cosine"); t in (0, 1]."""
    t = _check_time(t)
    _check_schedule(schedule)
    if bool((t <= 0).any()):
        raise ValueError("t must lie in (0, 1]: the weight is infinite at t = 0")
    if schedule == "linear":
        return 1 / t
    half = math.pi * t / 2
    return (math.pi / 2) * torch.sin(half) / (1 - torch.cos(half))


def masked_q_sample(
    x0: torch.Tensor,
    t: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator,
    schedule: str = "linear",
) -> torch.Tensor:
    """x_t: each token of x0 (n, L) replaced by the mask id ``vocab_size`` with probability
    1 - alpha(t_n), independently; ``t`` (n,) in [0, 1]."""
    vocab_size = check_positive_int("vocab_size", vocab_size, maximum=MAX_VOCAB)
    x0 = _check_data_tokens("x0", x0, vocab_size)
    alpha = mask_alpha(t, schedule)
    if alpha.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(alpha.shape)}")
    check_torch_generator("generator", generator)
    u = torch.rand(x0.shape, generator=generator, dtype=torch.float64)
    return torch.where(u < alpha[:, None], x0, vocab_size)


def masked_nelbo(
    denoiser: Denoiser,
    x0: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator,
    schedule: str = "linear",
    estimator: str = "time",
) -> torch.Tensor:
    """A one-sample estimate of the negative ELBO of each sequence of x0 (n, L), in nats.

    The masks come from :func:`masked_draw` (``estimator`` "time" or "count"), then
    :func:`masked_cross_entropy`; either way the estimate is unbiased for the integral of the
    module docstring (MDLM Eq. 10; Shi et al. 2024, Eq. 5), "count" when the denoiser ignores
    t. Returns (n,) float in the denoiser's dtype.
    """
    check_callable("denoiser", denoiser, "denoiser(x_t, t) -> logits (n, L, V)")
    vocab_size = check_positive_int("vocab_size", vocab_size, maximum=MAX_VOCAB)
    x0 = _check_data_tokens("x0", x0, vocab_size)
    t, weight, xt = masked_draw(x0, vocab_size, generator, schedule, estimator)
    return masked_cross_entropy(denoiser, x0, xt, t, weight)


def masked_draw(
    x0: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator,
    schedule: str = "linear",
    estimator: str = "time",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks for a one-sample ELBO estimate: times t (n,), weights (n,), both float64, and x_t.

    "time": t ~ U(0, 1], each token masked with probability 1 - alpha(t), weight
    -alpha'(t) / (1 - alpha(t)) (the integral as written). "count": k ~ U{1..L}, exactly k
    positions masked, chosen uniformly, weight L / k, t = k / L. The integral weighs the sets
    of k masked positions by 1 / (k C(L, k)) whatever the schedule (Chapter 9, eq.
    (elbo-entropy)), so for a denoiser that ignores t the two have the same mean; the second
    never puts a weight above L on a cross-entropy, where the first's 1 / t is unbounded, and
    its estimates spread less (the order view of Hoogeboom et al. 2022, Ou et al. 2025).
    Drawn from ``generator`` in that order (times or counts, then the masks).
    """
    check_torch_generator("generator", generator)
    vocab_size = check_positive_int("vocab_size", vocab_size, maximum=MAX_VOCAB)
    x0 = _check_data_tokens("x0", x0, vocab_size)
    _check_schedule(schedule)
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    n, length = x0.shape
    if estimator == "time":
        t = 1 - torch.rand(n, generator=generator, dtype=torch.float64)  # (0, 1]
        xt = masked_q_sample(x0, t, vocab_size, generator, schedule)
        return t, mask_weight(t, schedule), xt
    k = torch.randint(1, length + 1, (n,), generator=generator)
    ranks = torch.rand(n, length, generator=generator).argsort(1).argsort(1)
    xt = torch.where(ranks < k[:, None], vocab_size, x0)
    k = k.double()
    return k / length, length / k, xt


def masked_cross_entropy(
    denoiser: Denoiser,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """weight * sum over the masked positions of x_t of -log p(x_0^i | x_t), (n,), in nats:
    the integrand of the masked process's negative ELBO, with weight -alpha'(t) / (1 - alpha(t))
    (or the weight of :func:`masked_draw`'s "count" estimator). The mask id is V, the number
    of columns of the denoiser's logits."""
    check_callable("denoiser", denoiser, "denoiser(x_t, t) -> logits (n, L, V)")
    if not isinstance(x0, torch.Tensor) or not isinstance(xt, torch.Tensor):
        raise TypeError("x0 and xt must be integer tensors (n, L)")
    if xt.shape != x0.shape:
        raise ValueError(f"xt must have the shape of x0 {tuple(x0.shape)}, got {tuple(xt.shape)}")
    n = x0.shape[0]
    for name, value in (("t", t), ("weight", weight)):
        if not isinstance(value, torch.Tensor) or value.shape != (n,):
            raise ValueError(f"{name} must be a tensor of shape ({n},)")
    logits = denoiser(xt, t)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise TypeError("denoiser must return floating-point logits (n, L, V)")
    vocab_size = logits.shape[-1]
    x0 = _check_data_tokens("x0", x0, vocab_size)
    xt = check_tokens("xt", xt, vocab_size + 1)
    _check_logits(logits, x0.shape, vocab_size)
    cross_entropy = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (n, L)
    masked = (xt == vocab_size).to(cross_entropy.dtype)
    return weight.to(cross_entropy.dtype) * (masked * cross_entropy).sum(1)


@torch.no_grad()
def masked_sample(
    denoiser: Denoiser,
    prompt: torch.Tensor,
    vocab_size: int,
    steps: int,
    generator: torch.Generator,
    schedule: str = "linear",
) -> torch.Tensor:
    """The reverse masked process from t = 1 to 0 in ``steps`` equal steps of time.

    ``prompt`` (n, L): token ids, the mask id ``vocab_size`` at the positions to generate; the
    other tokens are given and never change (infilling, completion; an all-mask prompt samples
    unconditionally). From t to s < t, each masked token is revealed with probability
    (alpha(s) - alpha(t)) / (1 - alpha(t)), drawn from the denoiser's p(x_0^i | x_t); at s = 0
    that probability is 1, so every token is revealed exactly once. One denoiser call per step.
    """
    check_callable("denoiser", denoiser, "denoiser(x_t, t) -> logits (n, L, V)")
    vocab_size = check_positive_int("vocab_size", vocab_size, maximum=MAX_VOCAB)
    x = check_tokens("prompt", prompt, vocab_size + 1)
    steps = check_positive_int("steps", steps, maximum=MAX_STEPS)
    check_torch_generator("generator", generator)
    _check_schedule(schedule)
    n = x.shape[0]
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    alphas = mask_alpha(times, schedule)
    for k in range(steps):
        masked = x == vocab_size
        if not bool(masked.any()):
            break
        probs = _denoise(denoiser, x, times[k].expand(n), vocab_size)
        reveal = (alphas[k + 1] - alphas[k]) / (1 - alphas[k])
        chosen = torch.rand(x.shape, generator=generator, dtype=torch.float64) < reveal
        tokens = _categorical(probs, generator)
        x = torch.where(masked & (chosen | (k == steps - 1)), tokens, x)
    return x


def exact_denoiser(language: Language, process: DiscreteProcess | None = None) -> Denoiser:
    """The true p(x_0^i | x_t) of ``language`` as a denoiser: log-probabilities (n, L, V).

    For the masked process (``process`` None or absorbing) a revealed token is known and a
    masked one says nothing; for the uniform process a token y seen at step t has likelihood
    Qbar_t[v, y] under each v (t read as the step round(t T)). The marginals come from
    :meth:`diffusion_core.languages.Language.posterior_marginals` (exact enumeration).
    """
    if not isinstance(language, Language):
        raise TypeError(f"language must be a Language, got {type(language).__name__}")
    if process is not None and not isinstance(process, DiscreteProcess):
        raise TypeError(f"process must be a DiscreteProcess or None, got {type(process).__name__}")
    if process is not None and process.vocab_size != language.vocab_size:
        raise ValueError("process must have the language's vocabulary size")
    vocab = language.vocab_size
    uniform = process is not None and process.kind == "uniform"

    def denoise(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xt = check_tokens("xt", xt, vocab + (not uniform))
        if uniform:
            step = (t.double() * process.T).round().long()
            a = process.alpha_bars[step][:, None, None]
            likelihood = a * F.one_hot(xt, vocab) + (1 - a) / vocab
        else:
            likelihood = F.one_hot(xt, vocab + 1)[..., :vocab].double()
            likelihood[xt == vocab] = 1.0
        return language.posterior_marginals(likelihood.double()).log()

    return denoise


# --- the network ------------------------------------------------------------------------------


class TokenTransformer(nn.Module):
    """Token ids (n, L) in 0..V (V: the mask, or the start symbol) -> logits (n, L, V).

        h = E_token[x] + E_position[0..L-1];  h <- layer(h) (``layers`` times);
        logits = Linear(LayerNorm(h))

    The layers are the pre-norm transformer encoder layers of :mod:`diffusion_core.text`.
    Bidirectional, it is the denoiser of masked diffusion: no time input, since the true
    p(x_0 | x_t) depends only on x_t. With ``causal=True`` it is the autoregressive reference
    of the same size: position i sees positions up to i only, and reads [start, x_1, ...,
    x_{L-1}] to predict x_1, ..., x_L (:func:`autoregressive_nll`). ``forward(x, t=None)``
    accepts and ignores a time so that it can be passed as a denoiser.
    """

    def __init__(
        self,
        vocab_size: int,
        length: int,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        causal: bool = False,
    ):
        super().__init__()
        self.vocab_size = check_positive_int("vocab_size", vocab_size, maximum=MAX_VOCAB)
        self.length = check_positive_int("length", length, maximum=MAX_LENGTH)
        check_positive_int("dim", dim, maximum=4096)
        check_positive_int("layers", layers, maximum=64)
        check_positive_int("heads", heads, maximum=64)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads ({heads}), got {dim}")
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be True or False, got {causal!r}")
        self.causal = causal
        self.token_embedding = nn.Embedding(vocab_size + 1, dim)
        self.position_embedding = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x = check_tokens("x", x, self.vocab_size + 1)
        if x.shape[1] > self.length:
            raise ValueError(f"x must have at most {self.length} positions, got {x.shape[1]}")
        h = self.token_embedding(x) + self.position_embedding[: x.shape[1]]
        keys = torch.ones(x.shape, dtype=torch.bool, device=x.device)
        for layer in self.layers:
            h = layer(h, keys, causal=self.causal)
        return self.head(self.norm(h))

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, length={self.length}, causal={self.causal}"


def autoregressive_nll(net: TokenTransformer, x0: torch.Tensor) -> torch.Tensor:
    """-log p(x_0) = -sum_i log p(x_0^i | x_0^{<i}) of a causal :class:`TokenTransformer`,
    exact, in nats, (n,)."""
    _check_causal(net)
    x0 = _check_data_tokens("x0", x0, net.vocab_size)
    start = torch.full((x0.shape[0], 1), net.vocab_size, dtype=torch.int64, device=x0.device)
    logits = net(torch.cat([start, x0[:, :-1]], 1))
    return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").sum(1)


@torch.no_grad()
def autoregressive_sample(
    net: TokenTransformer, prefix: torch.Tensor, length: int, generator: torch.Generator
) -> torch.Tensor:
    """Complete each row of ``prefix`` (n, k), k >= 0 tokens, to ``length`` tokens, one token
    per network call, x^i ~ p(x^i | x^{<i})."""
    _check_causal(net)
    if isinstance(prefix, torch.Tensor) and prefix.ndim == 2 and prefix.shape[1] == 0:
        x = check_tokens(
            "prefix", torch.zeros(prefix.shape[0], 1, dtype=prefix.dtype), net.vocab_size
        )[:, :0]  # no token given: only the shape is checked
    else:
        x = _check_data_tokens("prefix", prefix, net.vocab_size)
    length = check_positive_int("length", length, minimum=max(x.shape[1], 1), maximum=net.length)
    check_torch_generator("generator", generator)
    start = torch.full((x.shape[0], 1), net.vocab_size, dtype=torch.int64)
    for i in range(x.shape[1], length):
        logits = net(torch.cat([start, x], 1))[:, i]
        probs = torch.softmax(logits.double(), -1)
        x = torch.cat([x, torch.multinomial(probs, 1, generator=generator)], 1)
    return x


# --- helpers ----------------------------------------------------------------------------------


def _categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of the last axis of ``probs``, shape probs.shape[:-1], int64."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def _denoise(denoiser, x: torch.Tensor, t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    logits = denoiser(x, t)
    _check_logits(logits, x.shape, vocab_size)
    return torch.softmax(logits.double(), dim=-1)


def _check_logits(logits, shape, vocab_size: int) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("denoiser must return floating-point logits (n, L, V)")
    if logits.shape != (*shape, vocab_size):
        raise ValueError(
            f"denoiser must return logits of shape {(*shape, vocab_size)}, got "
            f"{tuple(logits.shape)}"
        )


def _check_data_tokens(name: str, x, vocab_size: int) -> torch.Tensor:
    """Data tokens in 0..V-1; the mask id V in data is a clash, named as such."""
    if isinstance(x, torch.Tensor) and not x.is_floating_point() and x.numel() and x.ndim == 2:
        if bool((x == vocab_size).any()):
            raise ValueError(
                f"{name} must hold data tokens 0..{vocab_size - 1}; it holds the mask id "
                f"{vocab_size}, which clashes with the process's mask"
            )
    return check_tokens(name, x, vocab_size)


def _check_time(t) -> torch.Tensor:
    if isinstance(t, float | int) and not isinstance(t, bool):
        t = torch.tensor(float(t), dtype=torch.float64)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError("t must be a number or a floating-point tensor")
    if not bool(torch.isfinite(t).all()) or bool(((t < 0) | (t > 1)).any()):
        raise ValueError("t must lie in [0, 1]")
    return t.double()


def _check_schedule(schedule) -> None:
    if not isinstance(schedule, str) or schedule not in MASK_SCHEDULES:
        raise ValueError(f"schedule must be one of {MASK_SCHEDULES}, got {schedule!r}")


def _check_causal(net) -> None:
    if not isinstance(net, TokenTransformer) or not net.causal:
        raise TypeError("net must be a causal TokenTransformer")


def load_token_models(path: str | os.PathLike) -> tuple[dict[str, TokenTransformer], dict]:
    """The networks of a checkpoint written by ``scripts/train_text.py``, and its metadata.

    The file is a :mod:`diffusion_core.checkpoints` checkpoint of kind "text_models": for each
    model name (such as "markov_diffusion" or "arithmetic_autoregressive"), the
    :class:`TokenTransformer` settings, its EMA weights, its losses and training time. The nets
    come back in eval mode without gradients; the metadata is everything but the weights.
    """
    state = checkpoints.load(path, checkpoints.TEXT_MODELS)
    nets, metadata = {}, {key: value for key, value in state.items() if key != "models"}
    metadata["models"] = {}
    try:
        for name, model in state["models"].items():
            with torch.random.fork_rng(devices=[]):
                net = TokenTransformer(**model["net"])
            net.load_state_dict(model["weights"])
            nets[name] = net.eval().requires_grad_(False)
            metadata["models"][name] = {k: v for k, v in model.items() if k != "weights"}
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise checkpoints.CheckpointError(
            f"{path} is a text models checkpoint whose settings or weights do not fit ({err})"
        ) from None
    return nets, metadata
