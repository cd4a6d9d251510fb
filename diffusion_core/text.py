"""Prompts for digits, a word-level tokenizer and a tiny transformer text encoder.

Stable Diffusion conditions its denoiser on a prompt: a tokenizer turns the text into a fixed
number of token ids, a transformer text encoder (CLIP's, Radford et al. 2021) turns the ids into
a sequence of embeddings, and the U-Net attends to that sequence through cross-attention
(Rombach et al. 2022, Sec. 3.3). This module is the same pipeline in miniature, for prompts
about the scikit-learn digits:

    "a bold 7"  --Tokenizer-->  ids [<start>, a, bold, 7, <pad>, ...], mask [T, T, T, T, F, ...]
                --TextEncoder-->  embeddings (L, d), the padded rows zero

Prompts. :data:`PROMPT_TEMPLATES` holds short captions with a slot for the digit, which
:func:`make_prompt` fills with the label as a word ("seven") or a numeral ("7"). Only the digit
carries information: the style words ("bold", "thinly", ...) are drawn at random, independently
of the image, so the model must learn to ignore them, as it must learn that "7" and "seven"
mean the same thing (they are different tokens).

Tokens. The vocabulary is fixed and built from the templates: the special tokens ``<pad>``,
``<unk>`` and ``<start>``, the ten digit words, the ten numerals, then the other template words
in alphabetical order, so that a label's tokens have fixed ids (:attr:`Tokenizer.digit_token_ids`).
A prompt is lower-cased and split into words and punctuation marks; a word outside the
vocabulary becomes ``<unk>``. Every sequence starts with ``<start>`` (CLIP's start-of-text
token) and is padded with ``<pad>`` to ``max_length`` positions; a longer prompt is an error.

The null prompt. Classifier-free guidance (Ho & Salimans 2022) needs an "unconditional" input:
as in Stable Diffusion, it is the empty prompt :data:`NULL_PROMPT` = "". It encodes to the start
token alone, mask [T, F, F, ...]: a learned embedding (the start token's, passed through the
encoder) rather than a special case, and never an all-padding sequence, so that attention always
has at least one key and no softmax is taken over nothing. Training replaces a fraction of the
prompts by it (:func:`drop_prompts`), so that one network learns both the conditional and the
unconditional model.

The encoder has no pretrained weights: it is trained jointly with the latent denoiser
(:mod:`diffusion_core.latent`), which reads its output through the cross-attention layers of
:class:`diffusion_core.nets.TextUNet`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_core._validation import check_number, check_positive_int

__all__ = [
    "DIGIT_NUMERALS",
    "DIGIT_WORDS",
    "MAX_LENGTH",
    "MAX_PROMPTS",
    "NULL_PROMPT",
    "PROMPT_TEMPLATES",
    "TextEncoder",
    "Tokenizer",
    "drop_prompts",
    "make_prompt",
    "make_prompts",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_NUMERALS = tuple(str(label) for label in range(10))

PROMPT_TEMPLATES = (
    "{digit}",
    "the digit {digit}",
    "the number {digit}",
    "a handwritten {digit}",
    "the handwritten number {digit}",
    "a bold {digit}",
    "a thin {digit}",
    "a small {digit}",
    "a neatly written {digit}",
    "a sloppy handwritten {digit}",
    "{digit}, written thinly",
    "{digit}, written boldly",
    "a picture of the digit {digit}",
    "a photo of a handwritten {digit}",
)

NULL_PROMPT = ""
MAX_LENGTH = 10  # token positions, the start token included; the longest template needs 7
MAX_PROMPTS = 1_000_000  # prompts in one call (a bound on work, far above any batch here)
MAX_TOKENS = 4096  # the longest max_length a Tokenizer or TextEncoder accepts
MAX_WIDTH = 65_536  # the largest vocabulary, width, layer or head count of a TextEncoder

PAD, UNK, START = "<pad>", "<unk>", "<start>"
_SPECIAL_TOKENS = (PAD, UNK, START)
_TOKEN_PATTERN = re.compile(r"[^\W_]+|[^\w\s]")  # runs of letters/digits, or one punctuation


def _words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and single punctuation marks."""
    return _TOKEN_PATTERN.findall(text.lower())


# --- prompts ----------------------------------------------------------------------------------


def make_prompt(label: int, generator: torch.Generator) -> str:
    """A random caption of the digit ``label`` (0..9): a template of :data:`PROMPT_TEMPLATES`,
    the digit written as a word or a numeral with equal probability, both drawn from
    ``generator`` (template first, then the wording)."""
    label = check_positive_int("label", label, minimum=0, maximum=9)
    _check_generator(generator)
    template = PROMPT_TEMPLATES[_randint(len(PROMPT_TEMPLATES), generator)]
    wordings = (DIGIT_WORDS[label], DIGIT_NUMERALS[label])
    return template.format(digit=wordings[_randint(2, generator)])


def make_prompts(labels, generator: torch.Generator) -> list[str]:
    """One :func:`make_prompt` per label, in order; ``labels`` a sequence of ints in 0..9 or a
    1-D int tensor, of at most :data:`MAX_PROMPTS` labels."""
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.ndim != 1:
            raise ValueError(f"labels must have shape (n,), got {tuple(labels.shape)}")
        labels = labels.tolist()
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence):
        raise TypeError(
            f"labels must be a sequence of ints or a tensor, got {type(labels).__name__}"
        )
    _check_count("labels", len(labels))
    _check_generator(generator)
    for i, label in enumerate(labels):
        check_positive_int(f"labels[{i}]", label, minimum=0, maximum=9)
    return [make_prompt(label, generator) for label in labels]


def drop_prompts(
    prompts: Sequence[str], probability: float, generator: torch.Generator
) -> list[str]:
    """Replace each prompt by :data:`NULL_PROMPT` with probability ``probability``.

    Prompt dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1, p_uncond;
    Stable Diffusion drops 10% of its captions). One uniform draw per prompt from ``generator``.
    """
    prompts = _check_prompts(prompts)
    probability = check_number("probability", probability, 0.0, 1.0)
    _check_generator(generator)
    drop = torch.rand(len(prompts), generator=generator, device=generator.device) < probability
    return [
        NULL_PROMPT if dropped else text
        for text, dropped in zip(prompts, drop.tolist(), strict=True)
    ]


# --- tokenizer --------------------------------------------------------------------------------


class Tokenizer:
    """A word-level tokenizer with a fixed vocabulary built from :data:`PROMPT_TEMPLATES`.

    ``encode(prompts)`` gives ``(ids, mask)``, both of shape (n, max_length): int64 token ids
    [<start>, w_1, ..., w_k, <pad>, ...] and a bool mask that is True at the k + 1 real
    positions. Unknown words become ``<unk>``. A prompt of more than max_length - 1 words is a
    ``ValueError``. ``decode(ids)`` inverts ``encode`` for prompts in the vocabulary, up to
    case and spacing: words joined by single spaces, no space before punctuation.

    Attributes: ``vocab`` (the tokens, in id order), ``token_to_id``, ``pad_id``, ``unk_id``,
    ``start_id``, and ``digit_token_ids``, a (10, 2) int64 tensor whose row ``label`` holds the
    ids of that digit's word and numeral.
    """

    def __init__(self, templates: Sequence[str] = PROMPT_TEMPLATES, max_length: int = MAX_LENGTH):
        templates = _check_prompts(templates, name="templates")
        self.max_length = check_positive_int(
            "max_length", max_length, minimum=2, maximum=MAX_TOKENS
        )
        template_words = {
            word for template in templates for word in _words(template.format(digit=""))
        }
        digit_tokens = DIGIT_WORDS + DIGIT_NUMERALS
        others = sorted(template_words - set(digit_tokens))
        self.vocab: tuple[str, ...] = _SPECIAL_TOKENS + digit_tokens + tuple(others)
        self.token_to_id: dict[str, int] = {token: i for i, token in enumerate(self.vocab)}
        self.pad_id, self.unk_id, self.start_id = (self.token_to_id[t] for t in _SPECIAL_TOKENS)
        self.digit_token_ids = torch.tensor(
            [
                [self.token_to_id[w], self.token_to_id[n]]
                for w, n in zip(DIGIT_WORDS, DIGIT_NUMERALS, strict=True)
            ]
        )
        longest = max(len(_words(t.format(digit="0"))) for t in templates)
        if longest + 1 > self.max_length:
            raise ValueError(
                f"max_length must be at least {longest + 1} to hold every template with its "
                f"start token, got {self.max_length}"
            )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, prompt: str) -> list[str]:
        """The tokens of one prompt, ``<unk>`` for words outside the vocabulary (no start)."""
        return [word if word in self.token_to_id else UNK for word in _words(prompt)]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (n, max_length) int64 and the mask (n, max_length) bool of ``prompts``."""
        prompts = _check_prompts(prompts)
        ids = torch.full((len(prompts), self.max_length), self.pad_id, dtype=torch.int64)
        for row, prompt in enumerate(prompts):
            tokens = [START, *self.tokenize(prompt)]
            if len(tokens) > self.max_length:
                raise ValueError(
                    f"prompts[{row}] has {len(tokens)} tokens with the start token, more than "
                    f"max_length = {self.max_length}: {prompt!r}"
                )
            ids[row, : len(tokens)] = torch.tensor([self.token_to_id[t] for t in tokens])
        return ids, ids != self.pad_id

    def decode(self, ids: torch.Tensor) -> list[str]:
        """The prompts of a (n, L) tensor of ids; ``<start>`` and ``<pad>`` are dropped."""
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError("ids must be an integer torch.Tensor of shape (n, L)")
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape (n, L), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"ids must lie in 0..{self.vocab_size - 1}")
        prompts = []
        for row in ids.tolist():
            tokens = [self.vocab[i] for i in row if i not in (self.pad_id, self.start_id)]
            prompts.append(re.sub(r" ([^\w\s<>])", r"\1", " ".join(tokens)))
        return prompts

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


# --- text encoder -----------------------------------------------------------------------------


class _EncoderLayer(nn.Module):
    """h -> h + MHA(LN(h)); h -> h + MLP(LN(h)): a pre-norm transformer encoder layer.

    Multi-head self-attention (Vaswani et al. 2017, Sec. 3.2) in which padded positions are
    never attended to (they are masked out of the keys), then a GELU MLP of width 4 d. The
    layer norms come first, as in CLIP's text transformer and GPT-2. With ``causal=True``
    position i also never attends to a later position (GPT-2's mask), as an autoregressive
    model over tokens needs (:class:`diffusion_core.discrete.TokenTransformer`).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
        n, length, dim = h.shape
        q, k, v = (
            self.qkv(self.norm1(h))
            .reshape(n, length, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        keys = mask[:, None, None, :]
        if causal:
            keys = keys & torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        h = h + self.out(attended.transpose(1, 2).reshape(n, length, dim))
        return h + self.mlp(self.norm2(h))


class TextEncoder(nn.Module):
    """Token ids (n, L) and their mask -> embeddings (n, L, dim) and the same mask.

        h = E_token[ids] + E_position[0..L-1]                   learned embeddings
        h <- layer(h, mask)                                     ``layers`` pre-norm encoder layers
        embeddings = LayerNorm(h) * mask                        padded rows set to zero

    A miniature of CLIP's text transformer (Radford et al. 2021), without its causal mask: every
    real token sees every other real token, none sees padding, so the embeddings at real
    positions do not depend on what the padded positions hold. The zeroed padded rows carry
    nothing; a cross-attention layer should still take the mask and ignore them
    (:class:`diffusion_core.nets.CrossAttention` does).

    ``vocab_size`` and ``max_length`` come from the :class:`Tokenizer` (see
    :meth:`from_tokenizer`). Token embeddings are initialised N(0, 0.02^2) and positional ones
    N(0, 0.01^2), as in CLIP; the rest with PyTorch's defaults (the global seed decides). The
    weights are meant to be trained with the model that reads the embeddings.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int = MAX_LENGTH,
        dim: int = 32,
        layers: int = 2,
        heads: int = 4,
    ):
        super().__init__()
        self.vocab_size = check_positive_int("vocab_size", vocab_size, maximum=MAX_WIDTH)
        self.max_length = check_positive_int("max_length", max_length, maximum=MAX_TOKENS)
        self.dim = check_positive_int("dim", dim, maximum=MAX_WIDTH)
        check_positive_int("layers", layers, maximum=MAX_WIDTH)
        check_positive_int("heads", heads, maximum=MAX_WIDTH)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads ({heads}), got {dim}")
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.empty(max_length, dim))
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, **kwargs) -> TextEncoder:
        """An encoder sized for ``tokenizer`` (its vocabulary and max_length)."""
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a Tokenizer, got {type(tokenizer).__name__}")
        return cls(tokenizer.vocab_size, tokenizer.max_length, **kwargs)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(ids, mask)
        length = ids.shape[1]
        h = self.token_embedding(ids) + self.position_embedding[:length]
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h) * mask[..., None], mask

    def _check_inputs(self, ids, mask) -> None:
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError("ids must be an integer torch.Tensor of shape (n, L)")
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= self.max_length:
            raise ValueError(
                f"ids must have shape (n, L) with L <= max_length = {self.max_length}, "
                f"got {tuple(ids.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"ids must lie in 0..{self.vocab_size - 1}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool torch.Tensor shaped like ids")
        if mask.shape != ids.shape:
            raise ValueError(
                f"mask must have the shape of ids {tuple(ids.shape)}, got {tuple(mask.shape)}"
            )
        if ids.shape[0] and not bool(mask.any(dim=1).all()):
            raise ValueError("mask must mark at least one real position (the start token) per row")

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, max_length={self.max_length}, dim={self.dim}"


def _check_prompts(prompts, name: str = "prompts") -> list[str]:
    """A list copy of ``prompts``, after checking that it is a sequence of strings (one string
    alone is refused: it would be read as a sequence of one-letter prompts), of at most
    :data:`MAX_PROMPTS` of them."""
    if isinstance(prompts, str):
        raise TypeError(f"{name} must be a list of strings, got one string (write [{name[:-1]}])")
    if isinstance(prompts, bytes) or not isinstance(prompts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(prompts).__name__}")
    _check_count(name, len(prompts))
    for i, text in enumerate(prompts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(text).__name__}")
    return list(prompts)


def _check_count(name: str, count: int) -> None:
    if count > MAX_PROMPTS:
        raise ValueError(f"{name} must hold at most {MAX_PROMPTS} entries, got {count}")


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def _randint(high: int, generator: torch.Generator) -> int:
    """One integer uniform on 0..high-1, drawn from ``generator`` on the generator's device."""
    return int(torch.randint(high, (1,), generator=generator, device=generator.device))
