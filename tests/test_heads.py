"""Tests of the tensor Viterbi, the static-width word packing, the CRF's confidences and per-post losses, and the
compile-clean evaluation forward."""

from __future__ import annotations

import pytest
import torch
from torchcrf import CRF

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification
from modeling_muse.heads import CRFTaggingHead, WordPositions, viterbi_decode
from tiny_models import SENTIMENT_LABELS, TINY_LENGTH, tiny_config


def random_crf(num_tags: int, generator: torch.Generator) -> CRF:
    crf = CRF(num_tags, batch_first=True)
    with torch.no_grad():
        for parameter in (crf.start_transitions, crf.transitions, crf.end_transitions):
            parameter.copy_(2 * torch.randn(parameter.shape, generator=generator))
    return crf


def random_word_starts(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Word starts anywhere in each row, with rows of no word and of one word among them."""
    starts = torch.rand(batch, length, generator=generator) < torch.rand(batch, 1, generator=generator)
    starts[0] = False
    if batch > 1:
        starts[1] = False
        starts[1, int(torch.randint(length, (1,), generator=generator))] = True
    return starts


def pytorch_crf_tags(head: CRFTaggingHead, emissions: torch.Tensor, word_start_mask: torch.Tensor) -> torch.Tensor:
    """What decoding was with pytorch-crf's CRF.decode: its paths placed at word starts, -100 elsewhere."""
    counts = word_start_mask.sum(dim=1)
    width = max(int(counts.max()), 1)
    word_emissions = torch.zeros(len(emissions), width, emissions.shape[2])
    for row, starts in enumerate(word_start_mask):
        positions = starts.nonzero().flatten()
        word_emissions[row, : len(positions)] = emissions[row, positions]
    mask = torch.arange(width) < counts.unsqueeze(1)
    mask[:, 0] = True
    expected = torch.full(word_start_mask.shape, -100)
    for row, path in enumerate(head.crf.decode(word_emissions, mask=mask)):
        positions = word_start_mask[row].nonzero().flatten()
        expected[row, positions] = torch.tensor(path[: len(positions)], dtype=torch.long)
    return expected


@pytest.mark.parametrize("seed", range(40))
def test_viterbi_equals_pytorch_crf_on_random_emissions_and_masks(seed):
    generator = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 7, (1,), generator=generator))
    steps = int(torch.randint(1, 13, (1,), generator=generator))
    num_tags = int(torch.randint(1, 7, (1,), generator=generator))
    crf = random_crf(num_tags, generator)
    emissions = 3 * torch.randn(batch, steps, num_tags, generator=generator)
    lengths = torch.randint(0, steps + 1, (batch,), generator=generator)
    lengths[0] = min(1, steps)
    mask = torch.arange(steps) < lengths.unsqueeze(1)
    paths = viterbi_decode(emissions, mask, crf.start_transitions, crf.transitions, crf.end_transitions)
    assert paths.shape == (batch, steps) and paths.dtype == torch.long
    # pytorch-crf needs every first step on; a row of length 0 then has a one-step path, as viterbi_decode gives.
    first_on = mask.clone()
    first_on[:, 0] = True
    for row, expected in enumerate(crf.decode(emissions, mask=first_on)):
        assert paths[row, : len(expected)].tolist() == expected
        assert (paths[row, len(expected) :] == 0).all()


@pytest.mark.parametrize("seed", range(20))
def test_decoding_at_word_starts_equals_pytorch_crf_at_batch_and_static_width(seed):
    generator = torch.Generator().manual_seed(seed)
    batch, length = int(torch.randint(2, 6, (1,), generator=generator)), int(torch.randint(1, 15, (1,), generator=generator))
    head = CRFTaggingHead(hidden_size=4, num_labels=4, dropout=0.0)
    head.crf = random_crf(4, generator)
    emissions = 3 * torch.randn(batch, length, 4, generator=generator)
    starts = random_word_starts(batch, length, generator)
    expected = pytorch_crf_tags(head, emissions, starts)
    assert torch.equal(head.decode(emissions, WordPositions(starts)), expected)
    assert torch.equal(head.decode(emissions, WordPositions(starts, width=length + 5)), expected)


def test_static_width_packs_the_same_words_and_marginals():
    generator = torch.Generator().manual_seed(0)
    head = CRFTaggingHead(hidden_size=4, num_labels=3, dropout=0.0)
    head.crf = random_crf(3, generator)
    starts = random_word_starts(4, 9, generator)
    emissions = torch.randn(4, 9, 3, generator=generator)
    packed, static = WordPositions(starts), WordPositions(starts, width=12)
    assert static.mask.shape == static.index.shape == (4, 12)
    assert torch.equal(static.mask[:, : packed.width], packed.mask) and not static.mask[:, packed.width :].any()
    assert torch.equal(static.index[static.mask], packed.index[packed.mask])
    for row in range(4):
        assert static.index[row, static.mask[row]].tolist() == starts[row].nonzero().flatten().tolist()
    marginals, static_marginals = head.marginals(emissions, packed), head.marginals(emissions, static)
    assert torch.equal(static_marginals[:, : packed.width], marginals)
    assert static_marginals[:, packed.width :].abs().sum() == 0
    values = torch.arange(4 * 12).view(4, 12)
    scattered = static.scatter(values, fill_value=-100)
    assert torch.equal(scattered[starts], values[static.mask]) and (scattered[~starts] == -100).all()
    with pytest.raises(ValueError, match="width"):
        WordPositions(starts, width=0)


# ------------------------------------------------------------------------------------------- confidences and loss


def _random_tagger(
    seed: int, num_labels: int, batch: int, length: int
) -> tuple[CRFTaggingHead, torch.Tensor, torch.Tensor, torch.Generator]:
    """A tagging head with random CRF transitions, random word starts and emissions, and the generator drawn from."""
    generator = torch.Generator().manual_seed(seed)
    head = CRFTaggingHead(hidden_size=4, num_labels=num_labels, dropout=0.0)
    head.crf = random_crf(num_labels, generator)
    starts = random_word_starts(batch, length, generator)
    return head, starts, 3 * torch.randn(batch, length, num_labels, generator=generator), generator


@pytest.mark.parametrize("seed", range(10))
def test_tag_confidences_are_the_marginals_of_the_viterbi_tags_within_zero_and_one(seed):
    head, starts, emissions, _ = _random_tagger(seed, num_labels=4, batch=5, length=11)
    words = WordPositions(starts)
    tags = head.decode(emissions, words)
    with torch.no_grad():
        marginals = head.marginals(emissions, words)
        confidences = head.tag_confidences(emissions, words, tags)
    assert confidences.shape == (5, words.width) and confidences.dtype == torch.float32
    assert ((confidences >= 0) & (confidences <= 1)).all()
    for post in range(5):
        for word, position in enumerate(starts[post].nonzero().flatten().tolist()):
            expected = min(float(marginals[post, word, int(tags[post, position])]), 1.0)
            assert float(confidences[post, word]) == expected
    assert (confidences[~words.mask] == 0).all()


def test_tag_confidences_hold_a_certain_tag_to_one_where_float32_rounds_its_marginal_above():
    head = CRFTaggingHead(hidden_size=4, num_labels=1, dropout=0.0)
    words = WordPositions(torch.ones(1, 7, dtype=torch.bool))
    # One tag: its probability is exactly 1 at every word; scores of a trained model's size.
    emissions = 3.3 * torch.arange(1, 8, dtype=torch.float32).view(1, 7, 1)
    with torch.no_grad():
        for transition_scores in (head.crf.start_transitions, head.crf.transitions, head.crf.end_transitions):
            transition_scores.fill_(0.1)
        tags = head.decode(emissions, words)
        assert (head.marginals(emissions, words) > 1).any()  # the rounding the clamp is for
        assert torch.equal(head.tag_confidences(emissions, words, tags), torch.ones(1, 7))


@pytest.mark.parametrize("seed", range(10))
def test_per_post_losses_are_each_post_s_loss_and_average_to_the_batch_loss(seed):
    head, starts, emissions, generator = _random_tagger(seed, num_labels=3, batch=6, length=10)
    labels = torch.where(starts, torch.randint(3, (6, 10), generator=generator), torch.full((6, 10), -100))
    with torch.no_grad():
        losses = head.post_negative_log_likelihoods(emissions, WordPositions(starts), labels)
        batch_loss = head.negative_log_likelihood(emissions, WordPositions(starts), labels)
        assert losses.shape == (6,)
        for post in range(6):
            if not starts[post].any():
                assert losses[post].isnan()
                continue
            alone = WordPositions(starts[post : post + 1])
            own = head.negative_log_likelihood(emissions[post : post + 1], alone, labels[post : post + 1])
            torch.testing.assert_close(losses[post], own)
    has_words = starts.any(dim=1)
    torch.testing.assert_close(losses[has_words].mean(), batch_loss)
    torch.testing.assert_close(losses.nansum(), batch_loss * has_words.sum())


def test_per_post_losses_name_a_missing_word_tag():
    head = CRFTaggingHead(hidden_size=4, num_labels=2, dropout=0.0)
    words = WordPositions(torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="labels: every word's first sub-token"):
        head.post_negative_log_likelihoods(torch.zeros(1, 3, 2), words, torch.tensor([[-100, 0, -100]]))


# ------------------------------------------------------------------------------------------- torch.compile


def post_batch(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Processor-format tensors: left-aligned text of varied lengths, word starts after [CLS]."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (batch,), generator=generator)
    lengths[0] = length
    attention_mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
    word_start_mask = (torch.rand(batch, length, generator=generator) < 0.6) & attention_mask.bool()
    word_start_mask[:, 0] = False
    return {
        "input_ids": torch.randint(1000, 2000, (batch, length), generator=generator) * attention_mask,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "word_start_mask": word_start_mask.long(),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=generator),
    }


@pytest.mark.slow
@pytest.mark.parametrize("task", ["ner", "sentiment"])
def test_evaluation_forward_compiles_into_one_graph_for_any_batch_and_length(task):
    torch.manual_seed(0)
    if task == "ner":
        model = MuSEForTokenClassification(tiny_config()).eval()
    else:
        model = MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS)).eval()
    torch.compiler.reset()
    # fullgraph=True raises at any graph break (a .item(), a data-dependent branch, a Python-list round trip);
    # "eager" runs the captured graph as it is, so the outputs must be bit-identical to the model's.
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="eager")
    try:
        with torch.no_grad():
            for index, (batch, length) in enumerate([(2, 12), (3, TINY_LENGTH), (2, 9)]):
                inputs = post_batch(batch, length, seed=index)
                # After the first call, other batch sizes and text lengths must reuse the dynamic graph.
                with torch.compiler.set_stance("fail_on_recompile" if index else "default"):
                    traced = compiled(**inputs)
                eager = model(**inputs)
                assert torch.equal(traced.logits, eager.logits)
                if task == "ner":
                    assert torch.equal(traced.predicted_tag_ids, eager.predicted_tag_ids)
                    assert ((traced.predicted_tag_ids != -100) == inputs["word_start_mask"].bool()).all()
    finally:
        torch.compiler.reset()
