"""Synthetic posts whose picture alone tells the answer, written in every form the training scripts read.

NER: each post names one made-up entity (one or two invented words among common ones); its type is the picture's
colour: red PER, green LOC, blue ORG. Sentiment: the text is neutral filler; the class is the picture's colour: red
negative, green positive, blue neutral. A text-only model can find the entity but not its type (F1 about a third),
nor the sentiment (accuracy about a third).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 220)}
ENTITY_TYPE = {"red": "PER", "green": "LOC", "blue": "ORG"}
SENTIMENT = {"red": "negative", "green": "positive", "blue": "neutral"}
FILLER = ["i", "saw", "the", "news", "about", "today", "with", "and", "we", "talked", "at", "again", "so", "it", "was"]
SYLLABLES = ["zor", "blat", "quim", "vex", "ulo", "drak", "mip", "fen", "yol", "trez", "gau", "pli"]
SIZES = {"train": 192, "validation": 48, "test": 48}


def colour_of(image: Image.Image) -> str:
    """The name of the colour nearest to the picture's mean colour."""
    mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: float(((np.asarray(COLOURS[name]) - mean) ** 2).sum()))


def _posts(split: str, seed: int) -> list[dict]:
    generator = random.Random(f"{split}-{seed}")
    posts = []
    for index in range(SIZES[split]):
        colour = list(COLOURS)[index % 3]
        words = generator.sample(FILLER, 5)
        entity = ["".join(generator.sample(SYLLABLES, 2)) for _ in range(generator.choice((1, 2)))]
        position = generator.randrange(len(words) + 1)
        kind = ENTITY_TYPE[colour]
        tags = ["O"] * len(words)
        tags[position:position] = [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
        words[position:position] = entity
        posts.append({"id": f"{split}{index}", "colour": colour, "tokens": words, "ner_tags": tags})
    generator.shuffle(posts)
    return posts


def write_images(folder: Path, posts: list[dict], size: int = 48) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for post in posts:
        Image.new("RGB", (size, size), COLOURS[post["colour"]]).save(folder / f"{post['id']}.jpg", quality=95)


def all_posts(seed: int = 0) -> dict[str, list[dict]]:
    return {split: _posts(split, seed) for split in SIZES}


def write_jsonl(folder: Path, task: str = "mner") -> dict[str, Path]:
    """``<split>.jsonl`` with ``tokens``/``ner_tags`` (or ``text``/``label``) and ``image``, a path relative to the file,
    in ``images/``."""
    files = {}
    for split, posts in all_posts().items():
        write_images(folder / "images", posts)
        path = folder / f"{split}.jsonl"
        with path.open("w") as handle:
            for post in posts:
                handle.write(json.dumps({**_task_columns(post, task), "image": f"images/{post['id']}.jpg"}) + "\n")
        files[split] = path
    return files


def write_csv(folder: Path) -> dict[str, Path]:
    """Sentiment ``<split>.csv``: ``text``, ``label`` (strings) and ``image`` (a path relative to the file)."""
    import csv

    files = {}
    for split, posts in all_posts().items():
        write_images(folder / "pictures", posts)
        path = folder / f"{split}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label", "image"])
            writer.writeheader()
            for post in posts:
                writer.writerow({**_task_columns(post, "msa"), "image": f"pictures/{post['id']}.jpg"})
        files[split] = path
    return files


def write_hub_parquet(folder: Path, task: str = "mner") -> Path:
    """A Hub-style dataset folder: ``data/<split>-00000-of-00001.parquet`` with a ``datasets.Image`` column (bytes)
    and ClassLabel tags, as ``push_to_hub`` lays it out."""
    scratch = folder.parent / f"{folder.name}-images"
    for split, posts in all_posts().items():
        write_images(scratch, posts)
        rows = [{**_task_columns(post, task), "image": str(scratch / f"{post['id']}.jpg")} for post in posts]
        if task == "mner":
            names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
            label = {"ner_tags": datasets.List(datasets.ClassLabel(names=names))}
            rows = [{**row, "ner_tags": [names.index(tag) for tag in row["ner_tags"]]} for row in rows]
            features = {"tokens": datasets.List(datasets.Value("string")), **label}
        else:
            names = ["negative", "neutral", "positive"]
            rows = [{**row, "label": names.index(row["label"])} for row in rows]
            features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
        dataset = datasets.Dataset.from_list(rows, features=datasets.Features({**features, "image": datasets.Image()}))
        (folder / "data").mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def write_umt(folder: Path) -> tuple[Path, Path]:
    """The UMT release layout: ``train.txt``, ``valid.txt``, ``test.txt`` and an image folder of ``<IMGID>.jpg``."""
    names = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
    images = folder / "images"
    for split, posts in all_posts().items():
        write_images(images, posts)
        lines = []
        for post in posts:
            lines.append(f"IMGID:{post['id']}")
            lines += [f"{word}\t{tag}" for word, tag in zip(post["tokens"], post["ner_tags"])]
            lines.append("")
        (folder / names[split]).write_text("\n".join(lines))
    return folder, images


def _task_columns(post: dict, task: str) -> dict:
    if task == "mner":
        return {"tokens": post["tokens"], "ner_tags": post["ner_tags"]}
    return {"text": " ".join(post["tokens"][:5]), "label": SENTIMENT[post["colour"]]}
