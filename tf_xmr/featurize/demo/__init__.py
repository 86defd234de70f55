"""A small raw dataset anyone can featurize offline: pictures drawn per class and captions from a real news corpus.

    python -m tf_xmr.featurize.demo --out DIR [--per-class 50] [--seed 0]

Writes ``DIR/manifest.csv`` and the files it names (``DIR/images/<id>.png``, and a quarter of the captions as
``DIR/texts/<id>.txt``, the rest inline), for ``configs/featurize/demo.yaml``.

- **Classes** are six topics of gensim's ``lee_background.cor`` (300 Australian news articles, shipped in gensim's
  wheel): the articles that mention a seed word (courts, cricket, the Middle East, Afghanistan, police, the economy).
- **Captions** are 6 to 12 words: about two thirds drawn from the topic's own words (those most over-represented in
  its articles, taken from the corpus, not invented), the rest from the corpus's common words, so captions share
  vocabulary across classes and a caption alone is not a perfect label.
- **Pictures** are 96 x 96 PNGs: one shape and colour family per class (a red disc, a green square, ...) at a random
  place and size, with jittered colours, a second faint shape of another class and pixel noise, so a picture alone
  is not a perfect label either.

Seeded: the same ``--seed`` writes the same files (byte-identical PNGs and manifest).
"""

from __future__ import annotations

import collections
import csv
import os
import re

import numpy as np

from tf_xmr.errors import DataError

# Seed word of each topic -> the class name (each occurs in 13 to 53 of the 300 articles; "fire" is a gensim stop
# word, and "bank" there mostly means the West Bank).
TOPICS = {"court": "courts", "cricket": "cricket", "israeli": "middle_east", "afghanistan": "afghanistan",
          "police": "police", "economy": "economy"}
TOPIC_WORDS = 30  # words per topic list
COMMON_WORDS = 150  # the corpus's most frequent words outside every topic list
SHAPES = ("disc", "square", "triangle", "cross", "ring", "stripes")
COLOURS = ((200, 40, 40), (40, 160, 60), (50, 80, 210), (220, 180, 30), (150, 60, 190), (30, 170, 180))
SIZE = 96


def corpus_path() -> str:
    import gensim

    return os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "lee_background.cor")


def topic_word_lists() -> tuple[dict[str, list[str]], list[str]]:
    """Per class, the words most over-represented in its articles; and the common words. Deterministic."""
    from gensim.parsing.preprocessing import STOPWORDS

    with open(corpus_path(), encoding="utf-8", errors="replace") as handle:
        docs = [re.findall(r"[a-z]{3,15}", line.lower()) for line in handle]
    docs = [[w for w in doc if w not in STOPWORDS] for doc in docs]
    overall = collections.Counter(w for doc in docs for w in set(doc))
    lists, taken = {}, set()
    for seed, name in TOPICS.items():
        members = [doc for doc in docs if seed in doc]
        inside = collections.Counter(w for doc in members for w in set(doc))
        # Share of the word's articles that are this topic's, among words in at least 3 of them; ties by the word.
        ranked = sorted((w for w, n in inside.items() if n >= 3 and w not in taken),
                        key=lambda w: (-inside[w] / overall[w], -inside[w], w))
        lists[name] = ranked[:TOPIC_WORDS]
        taken.update(lists[name])
    common = [w for w, _ in sorted(overall.items(), key=lambda item: (-item[1], item[0])) if w not in taken]
    return lists, common[:COMMON_WORDS]


def _draw(rng: np.random.Generator, shape: str, colour, image, alpha: float) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image, "RGBA")
    size = int(rng.integers(28, 60))
    x, y = (int(v) for v in rng.integers(0, SIZE - size, size=2))
    jitter = np.clip(np.asarray(colour) + rng.integers(-30, 31, size=3), 0, 255)
    fill = (*(int(c) for c in jitter), int(255 * alpha))
    box = (x, y, x + size, y + size)
    if shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y + size), (x + size // 2, y), (x + size, y + size)], fill=fill)
    elif shape == "cross":
        third = size // 3
        draw.rectangle((x + third, y, x + 2 * third, y + size), fill=fill)
        draw.rectangle((x, y + third, x + size, y + 2 * third), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(size // 6, 3))
    else:  # stripes
        for offset in range(0, size, 8):
            draw.rectangle((x + offset, y, x + offset + 3, y + size), fill=fill)


def picture(rng: np.random.Generator, k: int):
    from PIL import Image

    background = tuple(int(v) for v in rng.integers(215, 256, size=3))
    image = Image.new("RGB", (SIZE, SIZE), background)
    other = int(rng.integers(len(SHAPES) - 1))
    other += other >= k
    _draw(rng, SHAPES[other], COLOURS[other], image, alpha=0.35)  # a faint distractor of another class
    _draw(rng, SHAPES[k], COLOURS[k], image, alpha=1.0)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(SIZE, SIZE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def caption(rng: np.random.Generator, topic: list[str], common: list[str]) -> str:
    words = [str(rng.choice(topic)) if rng.random() < 2 / 3 else str(rng.choice(common))
             for _ in range(int(rng.integers(6, 13)))]
    return " ".join(words).capitalize() + "."


def write_demo(out: str, *, per_class: int = 50, seed: int = 0) -> str:
    """Write the demo dataset into ``out`` (created; must not hold a manifest yet). Returns the manifest path."""
    out = os.path.abspath(out)
    manifest = os.path.join(out, "manifest.csv")
    if os.path.exists(manifest):
        raise DataError(f"{manifest} exists already; choose another --out")
    if per_class < 5:
        raise DataError(f"--per-class must be at least 5 (a class needs train, val and test items), got {per_class}")
    lists, common = topic_word_lists()
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "texts"), exist_ok=True)
    rows = []
    for k, name in enumerate(lists):
        for i in range(per_class):
            item = f"{name}-{i:03d}"
            picture(rng, k).save(os.path.join(out, "images", f"{item}.png"), optimize=False)
            text = caption(rng, lists[name], common)
            if i % 4 == 3:  # a quarter of the captions as .txt files, to show both manifest forms
                with open(os.path.join(out, "texts", f"{item}.txt"), "w", encoding="utf-8") as handle:
                    handle.write(text + "\n")
                text = f"texts/{item}.txt"
            rows.append({"id": item, "label": name, "image": f"images/{item}.png", "text": text})
    tmp = manifest + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "label", "image", "text"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest
