"""Languages whose distribution is known exactly: the reference for diffusion on text.

A model of text is usually judged against held-out text, whose true probabilities nobody knows.
Here the data come from code, so every sequence has an exact probability, and a model can be
measured against the answer, as the book's Gaussian mixtures serve the continuous chapters:

- :class:`MarkovLanguage`: sequences of fixed length from a Markov chain of order k over a small
  vocabulary, each context allowing only a few next tokens (a grammar: the other sequences have
  probability zero). :func:`random_markov_language` draws one.
- :class:`ArithmeticLanguage`: additions "17+25=042" of two uniformly drawn numbers with their
  sum, written with a fixed number of digits; a sequence is valid when the sum is right.

Both share the :class:`Language` interface: ``log_prob`` (exact, in nats; -inf off the support),
``sample``, ``entropy`` (exact entropy of a whole sequence, in nats), ``is_valid``, ``support``
(every sequence of positive probability, for exact computations on small languages), ``encode``
and ``decode``. From the support, :meth:`Language.posterior_marginals` gives the exact
conditional distribution of each token given noisy observations of all of them, the exact
denoiser of any discrete diffusion whose corruption acts on each token independently
(:func:`diffusion_core.discrete.exact_denoiser`).

Units. Log-probabilities and entropies are in nats per sequence; :func:`bits_per_token` divides
by ``length * log 2``. The entropy per token H(X_1..L) / L is the floor no model of the
language can beat in expected negative log-likelihood: the floor of the bits per token of a
diffusion model's ELBO or an autoregressive model's likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffusion_core._validation import check_number, check_positive_int, check_torch_generator

__all__ = [
    "MAX_SUPPORT",
    "ArithmeticLanguage",
    "Language",
    "MarkovLanguage",
    "BOOK_MARKOV",
    "bits_per_token",
    "book_languages",
    "check_tokens",
    "distinct_ngrams",
    "random_markov_language",
]

MAX_SUPPORT = 1 << 20  # sequences an exact enumeration may hold
MAX_VOCAB = 4096  # tokens of a vocabulary here (the mask or start symbol not included)
MAX_LENGTH = 4096  # tokens of a sequence
BOOK_MARKOV = {"vocab_size": 8, "order": 2, "length": 12, "allowed": 3, "seed": 2024}
"""The settings of the book's Markov language (:func:`book_languages`)."""


def check_tokens(name: str, x, vocab_size: int, *, allow_empty: bool = False) -> torch.Tensor:
    """A batch of token sequences: an integer tensor (n, L) with L >= 1 and n >= 1 (n = 0 only
    with ``allow_empty``) whose ids lie in ``0..vocab_size - 1``; returned as int64."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor (n, L), got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, L), got {tuple(x.shape)}")
    if x.shape[1] == 0 or (x.shape[0] == 0 and not allow_empty):
        raise ValueError(
            f"{name} must hold at least one sequence of at least one token, got "
            f"shape {tuple(x.shape)}"
        )
    if x.numel():
        low, high = (int(v) for v in torch.aminmax(x))
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} must hold token ids in 0..{vocab_size - 1}, got values in {low}..{high}"
            )
    return x.to(torch.int64)


def bits_per_token(nats, length: int) -> float:
    """Nats per sequence of ``length`` tokens as bits per token: nats / (length log 2)."""
    nats = check_number("nats", nats, 0.0)
    length = check_positive_int("length", length, maximum=MAX_LENGTH)
    return nats / (length * math.log(2))


def distinct_ngrams(x: torch.Tensor, n: int) -> float:
    """Distinct-n: the fraction of the n-grams of the sequences ``x`` (rows) that are distinct.

    A diversity score (Li et al. 2016): a model that repeats itself scores low. Compare it
    with the same score of as many sequences drawn from the true language.
    """
    x = check_tokens("x", x, MAX_VOCAB + 2)
    n = check_positive_int("n", n, maximum=x.shape[1])
    grams = x.unfold(1, n, 1).reshape(-1, n)
    return len(torch.unique(grams, dim=0)) / grams.shape[0]


class Language:
    """A distribution over token sequences of one length, known exactly (see the module).

    Subclasses set ``tokens`` (the vocabulary, one string per id) and ``length``, and define
    :meth:`log_prob`, :meth:`sample`, :meth:`entropy` and :meth:`support`.
    """

    tokens: tuple[str, ...]
    length: int

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, float64 (n,); -inf for a sequence of probability zero."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sequences (n, L) int64 drawn from the language with ``generator``."""
        raise NotImplementedError

    def entropy(self) -> float:
        """H(X_1..L) = -E log p(X), exact, in nats per sequence."""
        raise NotImplementedError

    def support(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sequence of positive probability (S, L) and its log-probability (S,)."""
        raise NotImplementedError

    def entropy_per_token(self) -> float:
        """H(X_1..L) / L in bits: the floor of any model's bits per token on this language."""
        return bits_per_token(self.entropy(), self.length)

    def is_valid(self, x: torch.Tensor) -> torch.Tensor:
        """Whether each sequence has positive probability (bool, (n,))."""
        return torch.isfinite(self.log_prob(x))

    def decode(self, x: torch.Tensor) -> list[str]:
        """The sequences as strings, tokens joined without spaces."""
        x = self._check(x)
        return ["".join(self.tokens[i] for i in row) for row in x.tolist()]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings of ``length`` one-character tokens as ids (n, L)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        index = {token: i for i, token in enumerate(self.tokens)}
        rows = []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or len(text) != self.length:
                raise ValueError(f"texts[{i}] must be a string of {self.length} tokens: {text!r}")
            if any(char not in index for char in text):
                raise ValueError(f"texts[{i}] holds tokens outside {''.join(self.tokens)!r}")
            rows.append([index[char] for char in text])
        if not rows:
            raise ValueError("texts must hold at least one string")
        return torch.tensor(rows, dtype=torch.int64)

    def posterior_marginals(self, likelihood: torch.Tensor) -> torch.Tensor:
        """p(x_i = v | y) for every position i and token v, exactly, by enumerating the support.

        ``likelihood`` (n, L, V) holds p(y_i | x_i = v), the probability of each position's
        observation given its token, the observations independent given x (a masked token:
        all ones; a revealed token v: the indicator of v; a uniformly corrupted token: a row of
        the D3PM matrix). Then p(x | y) is proportional to p(x) prod_i likelihood[i, x_i], and
        its marginals are returned (n, L, V), float64. An observation impossible under the
        language is a ``ValueError``.
        """
        if not isinstance(likelihood, torch.Tensor) or not likelihood.is_floating_point():
            raise TypeError("likelihood must be a floating-point tensor (n, L, V)")
        if likelihood.ndim != 3 or likelihood.shape[1:] != (self.length, self.vocab_size):
            raise ValueError(
                f"likelihood must have shape (n, {self.length}, {self.vocab_size}), got "
                f"{tuple(likelihood.shape)}"
            )
        if not bool(torch.isfinite(likelihood).all()) or bool((likelihood < 0).any()):
            raise ValueError("likelihood must hold finite non-negative numbers")
        sequences, log_p = self.support()
        log_lik = likelihood.double().log()  # (n, L, V)
        positions = torch.arange(self.length)
        weights = log_p + log_lik[:, positions, sequences].sum(-1)  # (n, S)
        if not bool(torch.isfinite(weights).any(dim=1).all()):
            raise ValueError("likelihood must be possible under the language for every row")
        weights = torch.softmax(weights, dim=1)
        one_hot = torch.nn.functional.one_hot(sequences, self.vocab_size).double()  # (S, L, V)
        return torch.einsum("ns,slv->nlv", weights, one_hot)

    def _check(self, x) -> torch.Tensor:
        x = check_tokens("x", x, self.vocab_size, allow_empty=True)
        if x.shape[1] != self.length:
            raise ValueError(f"x must have shape (n, {self.length}), got {tuple(x.shape)}")
        return x


class MarkovLanguage(Language):
    """Sequences of ``length`` tokens from a Markov chain of order ``order``.

        p(x) = prod_i P[c_i, x_i],   c_i = (x_{i-k}, ..., x_{i-1}),

    a context before the start padded with a start symbol (id V, never emitted). ``transition``
    is a float64 table of shape ((V + 1)^k, V), its rows probability vectors; the context
    (c_1, ..., c_k) is row sum_j c_j (V + 1)^(k - j). Zeros in it are forbidden continuations.
    """

    def __init__(
        self,
        transition: torch.Tensor,
        order: int,
        length: int,
        tokens: Sequence[str] | None = None,
    ):
        self.order = check_positive_int("order", order, maximum=8)
        self.length = check_positive_int("length", length, maximum=MAX_LENGTH)
        if not isinstance(transition, torch.Tensor) or not transition.is_floating_point():
            raise TypeError("transition must be a floating-point tensor ((V + 1)^order, V)")
        vocab = transition.shape[-1] if transition.ndim == 2 else 0
        if transition.ndim != 2 or not 1 <= vocab <= MAX_VOCAB:
            raise ValueError(f"transition must be 2-D with 1..{MAX_VOCAB} columns")
        if transition.shape[0] != (vocab + 1) ** order:
            raise ValueError(
                f"transition must have (V + 1)^order = {(vocab + 1) ** order} rows, got "
                f"{transition.shape[0]}"
            )
        transition = transition.double()
        if bool((transition < 0).any()) or not torch.allclose(
            transition.sum(1), torch.ones((), dtype=torch.float64), atol=1e-9
        ):
            raise ValueError("transition must have non-negative rows that sum to 1")
        self.transition = transition
        tokens = tuple("abcdefghijklmnopqrstuvwxyz"[:vocab]) if tokens is None else tokens
        if len(tokens) != vocab or not all(isinstance(t, str) and len(t) == 1 for t in tokens):
            raise ValueError(f"tokens must be {vocab} one-character strings")
        self.tokens = tuple(tokens)
        self._contexts = (vocab + 1) ** order
        self._start = sum(vocab * (vocab + 1) ** j for j in range(order))  # all start symbols

    def _next_context(self, context: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        return (context * (self.vocab_size + 1) + token) % self._contexts

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x)
        context = torch.full((x.shape[0],), self._start, dtype=torch.int64)
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for i in range(self.length):
            total = total + self.transition[context, x[:, i]].log()
            context = self._next_context(context, x[:, i])
        return total

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        n = check_positive_int("n", n)
        check_torch_generator("generator", generator)
        context = torch.full((n,), self._start, dtype=torch.int64)
        x = torch.empty(n, self.length, dtype=torch.int64)
        for i in range(self.length):
            x[:, i] = torch.multinomial(self.transition[context], 1, generator=generator)[:, 0]
            context = self._next_context(context, x[:, i])
        return x

    def entropy(self) -> float:
        """Exact, by carrying the distribution of the context along the sequence:
        H = sum_i E[H(P[c_i, .])]."""
        p = self.transition
        row_entropy = -(p * p.clamp_min(1e-300).log()).sum(1)
        context = torch.zeros(self._contexts, dtype=torch.float64)
        context[self._start] = 1.0
        tokens = torch.arange(self.vocab_size)
        following = self._next_context(torch.arange(self._contexts)[:, None], tokens)  # (C, V)
        total = 0.0
        for _ in range(self.length):
            total += float(context @ row_entropy)
            mass = context[:, None] * p
            context = torch.zeros_like(context).index_add_(
                0, following.reshape(-1), mass.reshape(-1)
            )
        return total

    def support(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Built token by token, keeping only continuations of positive probability."""
        sequences = torch.zeros(1, 0, dtype=torch.int64)
        context = torch.tensor([self._start])
        log_p = torch.zeros(1, dtype=torch.float64)
        tokens = torch.arange(self.vocab_size)
        for _ in range(self.length):
            step = self.transition[context]  # (S, V)
            keep = step > 0
            if int(keep.sum()) > MAX_SUPPORT:
                raise ValueError(f"the support holds more than {MAX_SUPPORT} sequences")
            rows, cols = keep.nonzero(as_tuple=True)
            sequences = torch.cat([sequences[rows], tokens[cols, None]], dim=1)
            log_p = log_p[rows] + step[rows, cols].log()
            context = self._next_context(context[rows], tokens[cols])
        return sequences, log_p

    def __repr__(self) -> str:
        return (
            f"MarkovLanguage(vocab_size={self.vocab_size}, order={self.order}, "
            f"length={self.length})"
        )


def random_markov_language(
    vocab_size: int,
    order: int,
    length: int,
    allowed: int,
    generator: torch.Generator,
    sharpness: float = 1.0,
) -> MarkovLanguage:
    """A random :class:`MarkovLanguage`: each context allows ``allowed`` next tokens, chosen at
    random, with probabilities softmax(sharpness z), z standard normal; all from ``generator``.
    """
    vocab_size = check_positive_int("vocab_size", vocab_size, maximum=26)
    order = check_positive_int("order", order, maximum=4)
    allowed = check_positive_int("allowed", allowed, maximum=vocab_size)
    sharpness = check_number("sharpness", sharpness, 0.0, 100.0)
    check_torch_generator("generator", generator)
    rows = (vocab_size + 1) ** order
    scores = torch.randn(rows, vocab_size, generator=generator, dtype=torch.float64)
    choice = torch.rand(rows, vocab_size, generator=generator).argsort(dim=1)[:, :allowed]
    logits = torch.full((rows, vocab_size), -math.inf, dtype=torch.float64)
    logits.scatter_(1, choice, sharpness * scores.gather(1, choice))
    return MarkovLanguage(torch.softmax(logits, dim=1), order, length)


class ArithmeticLanguage(Language):
    """Additions a+b=c of two numbers drawn uniformly from 0..10^digits - 1, written with
    ``digits`` digits each and the sum with digits + 1, zero-padded: "07+25=032".

    Tokens "0".."9", "+", "=" (ids 0..11); length 3 digits + 3. All 10^(2 digits) valid
    sequences are equally likely, so log p(x) = -2 digits log 10 for a valid sequence and
    -inf otherwise; the entropy is 2 digits log 10 nats per sequence. Validity (the sum right,
    the signs in place) is decidable, and nothing else matters.
    """

    def __init__(self, digits: int = 2):
        self.digits = check_positive_int("digits", digits, maximum=4)
        self.tokens = tuple("0123456789+=")
        self.length = 3 * self.digits + 3
        d = self.digits
        self._powers = {
            width: 10 ** torch.arange(width - 1, -1, -1, dtype=torch.int64) for width in (d, d + 1)
        }

    def _number(self, x: torch.Tensor, start: int, width: int) -> torch.Tensor:
        return (x[:, start : start + width] * self._powers[width]).sum(1)

    def _write(self, values: torch.Tensor, width: int) -> torch.Tensor:
        return values[:, None] // self._powers[width] % 10

    def compose(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The sequences "a+b=(a+b)" of the int tensors ``a``, ``b`` (n,) in 0..10^digits - 1."""
        top = 10**self.digits - 1
        for name, v in (("a", a), ("b", b)):
            if not isinstance(v, torch.Tensor) or v.is_floating_point() or v.ndim != 1:
                raise TypeError(f"{name} must be a 1-D integer tensor")
            if v.numel() and (int(v.min()) < 0 or int(v.max()) > top):
                raise ValueError(f"{name} must lie in 0..{top}")
        if a.shape != b.shape:
            raise ValueError(
                f"a and b must have the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
            )
        d, n = self.digits, a.shape[0]
        plus, equals = torch.full((n, 1), 10), torch.full((n, 1), 11)
        return torch.cat(
            [self._write(a, d), plus, self._write(b, d), equals, self._write(a + b, d + 1)], 1
        )

    def is_valid(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x)
        d = self.digits
        signs = (x[:, d] == 10) & (x[:, 2 * d + 1] == 11)
        digits = torch.cat([x[:, :d], x[:, d + 1 : 2 * d + 1], x[:, 2 * d + 2 :]], 1)
        numerals = (digits < 10).all(1)
        safe = digits.clamp(max=9)
        a, b = self._number(safe, 0, d), self._number(safe, d, d)
        return signs & numerals & (a + b == self._number(safe, 2 * d, d + 1))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        valid = self.is_valid(x)
        value = -self.entropy()
        return torch.where(valid, value, -math.inf).double()

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        n = check_positive_int("n", n)
        check_torch_generator("generator", generator)
        top = 10**self.digits
        a = torch.randint(top, (n,), generator=generator)
        b = torch.randint(top, (n,), generator=generator)
        return self.compose(a, b)

    def entropy(self) -> float:
        return 2 * self.digits * math.log(10)

    def support(self) -> tuple[torch.Tensor, torch.Tensor]:
        top = 10**self.digits
        if top * top > MAX_SUPPORT:
            raise ValueError(f"the support holds more than {MAX_SUPPORT} sequences")
        a, b = torch.cartesian_prod(torch.arange(top), torch.arange(top)).unbind(1)
        sequences = self.compose(a, b)
        return sequences, torch.full((len(sequences),), -self.entropy(), dtype=torch.float64)

    def __repr__(self) -> str:
        return f"ArithmeticLanguage(digits={self.digits})"


def book_languages() -> dict[str, Language]:
    """The two languages of the book's text chapter: "markov", the Markov language of
    :data:`BOOK_MARKOV` (drawn by :func:`random_markov_language` from its seed), and
    "arithmetic", :class:`ArithmeticLanguage` with two-digit numbers."""
    settings = dict(BOOK_MARKOV)
    generator = torch.Generator().manual_seed(settings.pop("seed"))
    return {
        "markov": random_markov_language(**settings, generator=generator),
        "arithmetic": ArithmeticLanguage(digits=2),
    }
