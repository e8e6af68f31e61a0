"""What MuSE tells a user about their inputs: the text report and the warnings built from it.

The processor measures what it does to the posts' words (`TextReport`: words cut at ``max_length``, words that
became the tokenizer's unknown token); the processor, the pipelines and the training scripts word their warnings
with the builders here, so that one kind of problem reads the same wherever it is found, and long lists name the
first `LISTED` items and count the rest (`first_then_count`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "LISTED",
    "UNKNOWN_WORDS_WARNING_MINIMUM",
    "UNKNOWN_WORDS_WARNING_SHARE",
    "PostCut",
    "TextReport",
    "count_entities_cut",
    "first_then_count",
    "placeholder_warning",
    "truncation_warning",
    "unknown_words_warning",
]

# How many posts, files or examples a message lists before it only counts the rest.
LISTED = 10
# Above this share of words turned into the unknown token (and at least UNKNOWN_WORDS_WARNING_MINIMUM words), a call
# warns that the tokenizer does not cover the text. English tweets lose about 1.5% of their words (emoji) with an
# English BERT vocabulary, MT-Product's Chinese 59%; the minimum keeps a short tweet with an emoji or two quiet.
UNKNOWN_WORDS_WARNING_SHARE = 0.1
UNKNOWN_WORDS_WARNING_MINIMUM = 3


def first_then_count(entries: Sequence[str], separator: str = "; ", more: str = "and {count} more") -> str:
    """The first `LISTED` entries joined by ``separator``, then ``more`` (formatted with the count of the rest)."""
    shown = separator.join(entries[:LISTED])
    if len(entries) <= LISTED:
        return shown
    return f"{shown}{separator}{more.format(count=len(entries) - LISTED)}"


@dataclass(frozen=True)
class TextReport:
    """What `MuSEProcessor` does to a set of posts' words (`MuSEProcessor.text_report`).

    Reports add up: ``a + b`` reports the posts of ``a`` followed by those of ``b`` (``b``'s cut posts renumbered
    after ``a``'s), so a caller that encodes posts one at a time can sum their reports into one.

    Attributes:
        posts: the number of posts.
        words: the number of words, all posts together.
        unknown_words: words the tokenizer turned, wholly or in part, into its unknown token (the model cannot read
            what they say). Words made only of characters the tokenizer deletes (zero-width joiners and the like)
            stand in as the unknown token by design and are not counted.
        cut_words: words past ``max_length`` sub-word tokens, cut off (with their labels).
        cut_entities: labelled entities that lost at least one word to the cut; None when that cannot be told
            (no word labels, or label ids without the processor's ``label_names``).
        cut_posts: the 0-based positions of the posts that were cut.
    """

    posts: int
    words: int
    unknown_words: int
    cut_words: int
    cut_entities: int | None
    cut_posts: list[int]

    @classmethod
    def empty(cls, count_entities: bool = False) -> TextReport:
        """The report of no posts (``cut_entities`` 0 rather than None when entities are counted)."""
        return cls(0, 0, 0, 0, 0 if count_entities else None, [])

    def __add__(self, other: TextReport) -> TextReport:
        # By fields, not isinstance: code loaded with trust_remote_code can give the processor and the pipelines
        # distinct copies of this class.
        if not all(hasattr(other, name) for name in self.__dataclass_fields__):
            return NotImplemented
        entities = None
        if self.cut_entities is not None and other.cut_entities is not None:
            entities = self.cut_entities + other.cut_entities
        return TextReport(
            posts=self.posts + other.posts,
            words=self.words + other.words,
            unknown_words=self.unknown_words + other.unknown_words,
            cut_words=self.cut_words + other.cut_words,
            cut_entities=entities,
            cut_posts=self.cut_posts + [self.posts + position for position in other.cut_posts],
        )

    @property
    def unknown_share(self) -> float:
        """The share of words that became the unknown token (0.0 without words)."""
        return self.unknown_words / self.words if self.words else 0.0


def unknown_words_warning(report: TextReport, tokenizer_name: str, examples: Sequence[str] = ()) -> str | None:
    """The warning for a tokenizer that does not cover the text, or None unless more than
    `UNKNOWN_WORDS_WARNING_SHARE` of the report's words, and `UNKNOWN_WORDS_WARNING_MINIMUM` words at least, became the
    unknown token."""
    if report.unknown_share <= UNKNOWN_WORDS_WARNING_SHARE or report.unknown_words < UNKNOWN_WORDS_WARNING_MINIMUM:
        return None
    shown = f" (e.g. {', '.join(repr(word) for word in examples[:LISTED])})" if examples else ""
    return (
        f"{report.unknown_words} of {report.words} words ({report.unknown_share:.0%}) became the tokenizer's unknown "
        f"token{shown}, so the model cannot read them: the tokenizer ({tokenizer_name!r}) does not cover this text's "
        f"script. Use a text encoder whose tokenizer does, with its processor (e.g. bert-base-chinese for Chinese "
        f"such as MT-Product; run_mner.py: --text_model_name_or_path)."
    )


def count_entities_cut(tags: Sequence[str], kept: int) -> int:
    """Entities (BIO tags) with at least one word at or after position ``kept``."""
    return sum(
        tag.startswith("B-") or (tag.startswith("I-") and (position == kept or tags[position - 1] == "O"))
        for position, tag in enumerate(tags[kept:], start=kept)
    )


@dataclass(frozen=True)
class PostCut:
    """A post that ``max_length`` cut: its position (None for a lone post), its words and how many were kept.

    ``entities`` is the number of labelled entities that lost a word (None when unknown); ``labelled`` says whether
    the post came with word labels at all (then the message says that they were cut too).
    """

    position: int | None
    words: Sequence[str]
    kept: int
    entities: int | None = None
    labelled: bool = False

    def described(self) -> str:
        cut = len(self.words) - self.kept
        text = f"its last {cut} of {len(self.words)} words were cut (from {self.words[self.kept]!r} on)"
        if self.entities is not None:
            return text + f", {self.entities} labelled entities among them"
        if self.labelled:
            return text + " with their labels (pass label_names to count the entities cut)"
        return text


def truncation_warning(
    cuts: Sequence[PostCut], limit: str, posts: int | None = None, consequence: str | None = None
) -> str:
    """One warning for the posts cut at the length ``limit`` (e.g. ``"max_length=64 sub-word tokens"``).

    Args:
        cuts: the posts that were cut, at least one.
        limit: the limit, as the reader knows it.
        posts: how many posts were looked at, for "3 of 40 posts"; None leaves the total out.
        consequence: what the cut means for the caller (e.g. that cut words get no prediction).
    """
    if len(cuts) == 1:
        cut = cuts[0]
        where = "The post" if cut.position is None else f"Post {cut.position}"
        after = f"; {consequence}" if consequence else ""
        return f"{where} is longer than {limit}: {cut.described()}{after}."
    total = f" of {posts}" if posts is not None else ""
    why = f" ({consequence})" if consequence else ""
    listed = first_then_count([f"post {cut.position}: {cut.described()}" for cut in cuts], more="and {count} more posts")
    return f"{len(cuts)}{total} posts are longer than {limit}{why}: {listed}."


def placeholder_warning(reasons: Sequence[str], posts: int, lone_post: bool, size: tuple[int, int]) -> str:
    """One warning for the posts that got the grey placeholder image instead of theirs (``allow_missing_image``).

    Args:
        reasons: per replaced post, why (a message that names the post).
        posts: how many posts the call had.
        lone_post: the call was on one post, not on a list.
        size: the placeholder's width and height.
    """
    placeholder = f"{size[0]}x{size[1]} grey placeholder"
    if lone_post and len(reasons) == 1:
        return f"{reasons[0]}\nUsing a {placeholder} instead (allow_missing_image=True)."
    listed = first_then_count(list(reasons), separator="\n  ", more="... and {count} more")
    return (
        f"{len(reasons)} of {posts} posts got a {placeholder} instead of their image (allow_missing_image=True; "
        f"their predictions rest on the text):\n  {listed}"
    )
