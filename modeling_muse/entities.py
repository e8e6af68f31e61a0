"""A post's words and the entities over them: how the NER pipeline reads text and groups word tags.

`PostText` keeps a post's text, its whitespace-split words and their character spans, so that entities can point
back into the text; `aggregate_word_tags` turns per-word BIO tags into `TokenClassificationPipeline`-style entities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .processing_muse import split_words_with_offsets

__all__ = ["OUTSIDE_TAG", "PostText", "WordAggregation", "aggregate_word_tags"]

OUTSIDE_TAG = "O"


@dataclass(frozen=True)
class PostText:
    """A post's text as the pipelines see it: the text that offsets index, its words and their spans.

    For a word-list input, ``text`` is ``" ".join(words)`` and the spans index into it.
    """

    text: str
    words: list[str]
    offsets: list[tuple[int, int]]

    @classmethod
    def from_input(cls, text: Any, argument: str = "text") -> PostText:
        """Read a post's ``text`` field: a raw string (split on whitespace) or a list of words.

        Errors start with ``argument``.
        """
        if isinstance(text, str):
            words, offsets = split_words_with_offsets(text)
            if not words:
                raise ValueError(
                    f"{argument}: the post's text is empty ({text!r}); give at least one word, e.g. "
                    f"{{'text': 'Messi arrives in Paris', 'image': ...}}."
                )
            return cls(text, words, offsets)
        if isinstance(text, Sequence) and not isinstance(text, (bytes, bytearray)):
            words = list(text)
            if not words:
                raise ValueError(f"{argument}: the post's word list is empty; give at least one word.")
            offsets, position = [], 0
            for index, word in enumerate(words):
                if not isinstance(word, str):
                    raise TypeError(f"{argument}: word {index} is a {type(word).__name__}, expected a string.")
                if not word.strip():
                    raise ValueError(
                        f"{argument}: word {index} is empty or whitespace ({word!r}); remove it or give the raw text "
                        f"as one string."
                    )
                offsets.append((position, position + len(word)))
                position += len(word) + 1
            return cls(" ".join(words), words, offsets)
        if text is None:
            raise ValueError(
                f"{argument}: the post has no text; give {{'text': <string or list of words>, 'image': ...}}."
            )
        raise TypeError(f"{argument}: expected a string or a list of words, got {type(text).__name__}.")


class WordAggregation(str, Enum):
    """How word tags become entities (``aggregation_strategy``); see `aggregate_word_tags`."""

    NONE = "none"
    SIMPLE = "simple"
    FIRST = "first"

    @classmethod
    def _missing_(cls, value: object) -> WordAggregation:
        raise ValueError(
            f"aggregation_strategy: {value!r} is not supported; choose one of {[member.value for member in cls]}."
        )


def _split_tag(tag: str) -> tuple[str, str]:
    # As TokenClassificationPipeline: a tag without a B-/I- prefix (IO tagging) continues like I-.
    if tag.startswith(("B-", "I-")):
        return tag[0], tag[2:]
    return "I", tag


def aggregate_word_tags(
    post: PostText,
    tags: Sequence[str],
    scores: Sequence[float],
    aggregation_strategy: str | WordAggregation = WordAggregation.SIMPLE,
) -> list[dict[str, Any]]:
    """Turn per-word tags and confidences into `TokenClassificationPipeline`-style entities.

    Args:
        post: the post's text, words and word spans.
        tags: the predicted tag of each word, in order (may be shorter than ``post.words`` when the post was
            truncated to the model's length; later words get no entity).
        scores: each word's confidence in its tag, the CRF marginal probability.
        aggregation_strategy:
            - ``"none"``: one item per word not tagged ``O``: ``entity`` (the tag), ``score``, ``index`` (word
              index), ``word``, ``start``, ``end``.
            - ``"simple"``: BIO runs become entities: a ``B-X`` word, or an ``I-X`` word that does not continue an
              ``X`` entity on the previous word, starts an entity ``X``; following ``I-X`` words extend it.
            - ``"first"``: like ``"simple"`` but an entity extends over any following ``I-`` words whatever their
              type, and its type is its first word's. The CRF already reads each word at its first sub-token, so
              this is the word-level meaning of "the first piece decides".

    Grouped entities have ``entity_group``, ``score``, ``word`` (the exact text span), ``start`` and ``end``.
    The score of a multi-word entity is the mean of its words' marginals, as `TokenClassificationPipeline`
    averages token scores: it stays comparable across entity lengths (a product would shrink with every word)
    and each term is an exact CRF posterior. It is not the probability of the whole span's tag sequence.
    """
    strategy = WordAggregation(aggregation_strategy)
    tagged = [(index, tag, float(score)) for index, (tag, score) in enumerate(zip(tags, scores)) if tag != OUTSIDE_TAG]
    if strategy is WordAggregation.NONE:
        return [
            {
                "entity": tag,
                "score": score,
                "index": index,
                "word": post.words[index],
                "start": post.offsets[index][0],
                "end": post.offsets[index][1],
            }
            for index, tag, score in tagged
        ]
    groups: list[tuple[str, list[int], list[float]]] = []
    for index, tag, score in tagged:
        prefix, entity_type = _split_tag(tag)
        previous = groups[-1] if groups else None
        continues = (
            previous is not None
            and prefix == "I"
            and previous[1][-1] == index - 1
            and (strategy is WordAggregation.FIRST or previous[0] == entity_type)
        )
        if continues:
            previous[1].append(index)
            previous[2].append(score)
        else:
            groups.append((entity_type, [index], [score]))
    entities = []
    for entity_type, indices, group_scores in groups:
        start, end = post.offsets[indices[0]][0], post.offsets[indices[-1]][1]
        entities.append(
            {
                "entity_group": entity_type,
                "score": sum(group_scores) / len(group_scores),
                "word": post.text[start:end],
                "start": start,
                "end": end,
            }
        )
    return entities
