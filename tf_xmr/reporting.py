"""Plain-text tables of retrieval scores for the command-line tools."""

from __future__ import annotations


def format_table(metrics: dict, splits=("val", "test")) -> str:
    """A fixed-width table: one row per split, one column per ``map_*`` entry, plus the protocol line."""
    rows = [(split, metrics[split]) for split in splits if split in metrics]
    if not rows:
        return "(no scores)"
    columns = [key for key in rows[0][1] if key.startswith("map_")]
    header = "split  " + "  ".join(f"{c[4:]:>8}" for c in columns)
    lines = [header]
    for split, scores in rows:
        lines.append(f"{split:<6} " + "  ".join(f"{scores[c]:8.4f}" for c in columns))
    proto = metrics.get("protocol")
    if proto:
        lines.append(
            "protocol: distance={distance} k={k} normalization={normalization} ties={tie_order}".format(
                distance=proto.get("distance"), k=proto.get("k") or "all", normalization=proto.get("normalization"),
                tie_order=proto.get("tie_order", "stable_by_index"),
            )
        )
    for name, preset in metrics.get("presets", {}).items():
        scores = preset.get("test", {})
        cells = "  ".join(f"{k[4:]}={v:.4f}" for k, v in scores.items() if k.startswith("map_"))
        lines.append(f"test with preset {name}: {cells}")
    if "zero_shot" in metrics:
        lines.append(format_zero_shot(metrics["zero_shot"]))
    return "\n".join(lines)


def format_zero_shot(report: dict) -> str:
    """The zero-shot block: one row per protocol (model and random ranking), one column per ``map_*`` entry."""
    blocks = [("standard (seen)", report["standard"]), ("zero-shot (unseen)", report["zero_shot"]),
              ("GZS seen queries", report["generalized"]["seen"]),
              ("GZS unseen queries", report["generalized"]["unseen"]),
              ("GZS harmonic mean", report["generalized"]["harmonic"])]
    random = report.get("random_ranking")
    columns = [key for key in blocks[0][1] if key.startswith("map_")]
    lines = [f"zero-shot on {report.get('split', 'test')}, unseen classes: "
             + ", ".join(report.get("unseen_class_names") or map(str, report["unseen_classes"])),
             f"{'protocol':<20}" + "".join(f"{c[4:]:>9}" for c in columns)
             + ("   random: " + " ".join(f"{c[4:]:>7}" for c in columns) if random else "")]
    random_blocks = ([random["standard"], random["zero_shot"], random["generalized"]["seen"],
                      random["generalized"]["unseen"], random["generalized"]["harmonic"]] if random else [None] * 5)
    for (name, scores), chance in zip(blocks, random_blocks, strict=True):
        line = f"{name:<20}" + "".join(f"{scores[c]:9.4f}" for c in columns)
        if chance is not None:
            line += "           " + " ".join(f"{chance[c]:7.4f}" for c in columns)
        lines.append(line)
    return "\n".join(lines)
