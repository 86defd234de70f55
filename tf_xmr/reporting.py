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
    return "\n".join(lines)
