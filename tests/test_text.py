"""Tests for :mod:`diffusion_core.text`: prompts, the tokenizer, the null prompt and the encoder."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusion_core.text import (
    DIGIT_NUMERALS,
    DIGIT_WORDS,
    MAX_LENGTH,
    NULL_PROMPT,
    PROMPT_TEMPLATES,
    TextEncoder,
    Tokenizer,
    drop_prompts,
    make_prompt,
    make_prompts,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def all_prompts():
    """Every template with every digit, as a word and as a numeral."""
    return [
        template.format(digit=wording)
        for template in PROMPT_TEMPLATES
        for wordings in zip(DIGIT_WORDS, DIGIT_NUMERALS, strict=True)
        for wording in wordings
    ]


def small_encoder(tokenizer, seed=0):
    torch.manual_seed(seed)
    return TextEncoder.from_tokenizer(tokenizer, dim=16, layers=2, heads=2)


# --- prompts ------------------------------------------------------------------------------------


def test_make_prompt_mentions_its_label_once_and_covers_every_wording(tokenizer):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(40)
    prompts = make_prompts(labels, generator)
    ids, _ = tokenizer.encode(prompts)
    digit_ids = tokenizer.digit_token_ids  # (10, 2): word and numeral of each label
    used = {label: set() for label in range(10)}
    for label, row in zip(labels.tolist(), ids, strict=True):
        mentioned = row[torch.isin(row, digit_ids.flatten())]
        assert mentioned.numel() == 1
        used[label].add(int(mentioned))
    for label in range(10):
        assert used[label] == set(digit_ids[label].tolist())  # both wordings, nothing else
    wordings = (*DIGIT_WORDS, *DIGIT_NUMERALS)
    for template in PROMPT_TEMPLATES:
        assert {template.format(digit=w) for w in wordings} & set(prompts), template


def test_make_prompt_is_determined_by_the_generator():
    first = make_prompts(range(10), torch.Generator().manual_seed(3))
    second = make_prompts(range(10), torch.Generator().manual_seed(3))
    other = make_prompts(range(10), torch.Generator().manual_seed(4))
    assert first == second != other


def test_drop_prompts_rate_and_extremes():
    prompts = ["a bold 7"] * 4000
    generator = torch.Generator().manual_seed(0)
    assert drop_prompts(prompts, 0.0, generator) == prompts
    assert drop_prompts(prompts, 1.0, generator) == [NULL_PROMPT] * 4000
    dropped = drop_prompts(prompts, 0.1, generator)
    assert set(dropped) == {NULL_PROMPT, "a bold 7"}
    rate = dropped.count(NULL_PROMPT) / 4000
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 4000)


# --- tokenizer ----------------------------------------------------------------------------------


def test_every_template_word_is_in_the_vocabulary(tokenizer):
    for prompt in all_prompts():
        assert "<unk>" not in tokenizer.tokenize(prompt), prompt
    assert tokenizer.vocab[:3] == ("<pad>", "<unk>", "<start>")
    assert len(set(tokenizer.vocab)) == tokenizer.vocab_size


def test_round_trip_of_every_template_prompt(tokenizer):
    prompts = all_prompts()
    ids, mask = tokenizer.encode(prompts)
    assert tokenizer.decode(ids) == prompts
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (len(prompts), MAX_LENGTH)


def test_digits_in_words_and_numerals_map_to_their_label_tokens(tokenizer):
    for label in range(10):
        ids, _ = tokenizer.encode([DIGIT_WORDS[label], f"the digit {label}"])
        assert torch.equal(ids[:, [1, 3]].diagonal(), tokenizer.digit_token_ids[label])
        assert tokenizer.vocab[int(ids[0, 1])] == DIGIT_WORDS[label]
        assert tokenizer.vocab[int(ids[1, 3])] == DIGIT_NUMERALS[label]
    assert tokenizer.digit_token_ids.unique().numel() == 20


def test_padding_mask_and_start_token(tokenizer):
    prompts = ["seven", "a bold 3", "3, written thinly", NULL_PROMPT]
    ids, mask = tokenizer.encode(prompts)
    lengths = [2, 4, 5, 1]  # the start token and the words (the comma is a token)
    for row, length in enumerate(lengths):
        assert ids[row, 0] == tokenizer.start_id
        assert mask[row].tolist() == [True] * length + [False] * (MAX_LENGTH - length)
        assert (ids[row, length:] == tokenizer.pad_id).all()
    assert torch.equal(mask, ids != tokenizer.pad_id)
    assert tokenizer.decode(ids[3:]) == [NULL_PROMPT]


def test_case_spacing_and_unknown_words(tokenizer):
    ids, _ = tokenizer.encode(["  A BOLD   Seven ", "a bold seven", "a purple seven!"])
    assert torch.equal(ids[0], ids[1])
    assert ids[2, 2] == ids[2, 4] == tokenizer.unk_id  # "purple" and "!"
    assert tokenizer.decode(ids[2:]) == ["a <unk> seven <unk>"]


def test_prompts_longer_than_max_length_are_an_error(tokenizer):
    longest = " ".join(["seven"] * (MAX_LENGTH - 1))
    tokenizer.encode([longest])  # start token + 9 words = 10 positions: fits
    with pytest.raises(ValueError, match=r"prompts\[1\] has 11 tokens.*max_length = 10"):
        tokenizer.encode(["seven", longest + " more"])


# --- encoder ------------------------------------------------------------------------------------


def test_encoder_output_shape_mask_and_padded_rows(tokenizer):
    encoder = small_encoder(tokenizer)
    ids, mask = tokenizer.encode(["a bold 3", NULL_PROMPT, "the handwritten number nine"])
    embeddings, returned_mask = encoder(ids, mask)
    assert embeddings.shape == (3, MAX_LENGTH, 16)
    assert embeddings.dtype == torch.float32
    assert returned_mask is mask
    assert (embeddings[~mask] == 0).all()
    assert (embeddings[mask].abs().sum(-1) > 0).all()
    default = TextEncoder.from_tokenizer(tokenizer)
    assert default(ids, mask)[0].shape == (3, MAX_LENGTH, 32)


def test_padded_positions_do_not_affect_real_positions(tokenizer):
    encoder = small_encoder(tokenizer)
    ids, mask = tokenizer.encode(["a bold 3", "seven", NULL_PROMPT])
    scrambled = ids.clone()
    garbage = torch.randint(tokenizer.vocab_size, ids.shape, generator=torch.Generator())
    scrambled[~mask] = garbage[~mask]
    with torch.no_grad():
        clean, _ = encoder(ids, mask)
        dirty, _ = encoder(scrambled, mask)
        alone, _ = encoder(ids[1:2], mask[1:2])
        changed, _ = encoder(ids.where(ids != tokenizer.digit_token_ids[3, 1], 5), mask)
    torch.testing.assert_close(dirty, clean, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, clean[1:2], rtol=0, atol=1e-6)
    assert (changed[0] - clean[0]).abs().max() > 1e-3  # a real token does change the output


def test_encoder_is_determined_by_the_global_seed(tokenizer):
    ids, mask = tokenizer.encode(all_prompts()[:8])
    first, second, other = (small_encoder(tokenizer, s) for s in (3, 3, 4))
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.token_embedding.weight, other.token_embedding.weight)
    assert not torch.equal(first.position_embedding, other.position_embedding)
    assert torch.equal(first(ids, mask)[0], second(ids, mask)[0])


def test_gradients_reach_every_parameter(tokenizer):
    encoder = small_encoder(tokenizer)
    ids, mask = tokenizer.encode(["a bold 3", NULL_PROMPT])
    embeddings, _ = encoder(ids, mask)
    embeddings.square().sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# --- argument checks ---------------------------------------------------------------------------


def test_bad_arguments_are_rejected_by_name(tokenizer):
    generator = torch.Generator()
    with pytest.raises(ValueError, match="label"):
        make_prompt(10, generator)
    with pytest.raises(TypeError, match="label"):
        make_prompt("7", generator)
    with pytest.raises(TypeError, match="generator"):
        make_prompt(7, 0)
    with pytest.raises(TypeError, match="labels"):
        make_prompts(torch.tensor([1.0]), generator)
    with pytest.raises(ValueError, match="probability"):
        drop_prompts(["a"], 1.5, generator)
    with pytest.raises(TypeError, match="prompts must be a list"):
        tokenizer.encode("a bold 3")
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        tokenizer.encode(["a bold 3", 3])
    with pytest.raises(ValueError, match="max_length must be at least 7"):
        Tokenizer(max_length=4)
    with pytest.raises(ValueError, match="ids must lie in"):
        tokenizer.decode(torch.tensor([[tokenizer.vocab_size]]))
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        TextEncoder(tokenizer.vocab_size, dim=10, heads=4)


def test_encoder_rejects_bad_inputs(tokenizer):
    encoder = small_encoder(tokenizer)
    ids, mask = tokenizer.encode(["a bold 3"])
    with pytest.raises(TypeError, match="ids"):
        encoder(ids.float(), mask)
    with pytest.raises(ValueError, match="max_length = 10"):
        encoder(torch.cat([ids, ids], dim=1), torch.cat([mask, mask], dim=1))
    with pytest.raises(TypeError, match="mask"):
        encoder(ids, mask.long())
    with pytest.raises(ValueError, match="mask must have the shape of ids"):
        encoder(ids, mask[:, :5])
    with pytest.raises(ValueError, match="at least one real position"):
        encoder(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="ids must lie in"):
        encoder(ids - 1, mask)


# --- argument checks ------------------------------------------------------------------------


def test_prompt_functions_refuse_bad_arguments_by_name():
    generator = torch.Generator().manual_seed(0)
    for probability in (math.nan, math.inf, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"probability must be a finite number in \[0, 1\]"):
            drop_prompts(["a"], probability, generator)
    with pytest.raises(TypeError, match=r"prompts must be a list of strings, got one string"):
        drop_prompts("the digit 3", 0.5, generator)
    with pytest.raises(ValueError, match=r"labels\[1\] must be in 0\.\.9, got 12"):
        make_prompts([3, 12], generator)
    with pytest.raises(TypeError, match=r"labels\[0\] must be an int, got float"):
        make_prompts([3.0], generator)
    with pytest.raises(TypeError, match="labels must be a sequence of ints or a tensor, got str"):
        make_prompts("37", generator)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        make_prompts([3], None)
    with pytest.raises(ValueError, match=r"labels must hold at most 1000000 entries"):
        make_prompts(range(10**7), generator)
    with pytest.raises(ValueError, match=r"max_length must be in 2\.\.4096"):
        Tokenizer(max_length=10**9)
    with pytest.raises(ValueError, match=r"dim must be in 1\.\.65536"):
        TextEncoder(30, dim=10**6)


@settings(max_examples=40, deadline=None)
@given(
    prompts=st.one_of(
        st.text(max_size=8), st.lists(st.one_of(st.text(max_size=30), st.integers()), max_size=4)
    ),
    probability=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.booleans()),
)
def test_drop_prompts_refuses_by_name_or_keeps_or_empties_each_prompt(prompts, probability):
    try:
        dropped = drop_prompts(prompts, probability, torch.Generator().manual_seed(0))
    except (TypeError, ValueError) as error:
        assert str(error).split()[0].split("[")[0] in {"prompts", "probability"}, str(error)
        return
    assert len(dropped) == len(prompts)
    assert all(new in (old, NULL_PROMPT) for old, new in zip(prompts, dropped, strict=True))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompts=st.lists(st.text(max_size=40), min_size=0, max_size=4))
def test_encode_refuses_by_name_or_gives_ids_of_the_documented_shape(tokenizer, prompts):
    try:
        ids, mask = tokenizer.encode(prompts)
    except ValueError as error:
        assert str(error).startswith("prompts["), str(error)
        return
    assert ids.shape == mask.shape == (len(prompts), MAX_LENGTH)
    assert bool(mask[:, 0].all()) and bool((ids < tokenizer.vocab_size).all())
