"""The manifest: CSV and JSON Lines read alike, every mistake one line naming the file and line, seeded splits."""

import json

import pytest

from tf_xmr.errors import DataError
from tf_xmr.featurize.manifest import assign_splits, read_manifest


def _files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not read here")
    (tmp_path / "caption.txt").write_text("A caption from a file.\n")
    return tmp_path


def test_csv_and_jsonl_give_the_same_rows(tmp_path):
    _files(tmp_path)
    (tmp_path / "m.csv").write_text("id,split,label,image,text\n"
                                    "x1,train,cat,a.png,An inline caption\n"
                                    "x2,test,cat|dog,,caption.txt\n"
                                    "x3,train,dog,a.png,\n")
    with open(tmp_path / "m.jsonl", "w") as handle:
        for record in ({"id": "x1", "split": "train", "label": "cat", "image": "a.png", "text": "An inline caption"},
                       {"id": "x2", "split": "test", "label": ["cat", "dog"], "text": "caption.txt"},
                       {"id": "x3", "split": "train", "label": "dog", "image": "a.png"}):
            handle.write(json.dumps(record) + "\n")
    csv_rows, jsonl_rows = read_manifest(tmp_path / "m.csv"), read_manifest(tmp_path / "m.jsonl")
    for a, b in zip(csv_rows.rows, jsonl_rows.rows, strict=True):
        assert (a.id, a.split, a.labels, a.image, a.text) == (b.id, b.split, b.labels, b.image, b.text)
    rows = csv_rows.rows
    assert rows[0].image == str(tmp_path / "a.png") and rows[0].text == "An inline caption"
    assert rows[1].labels == ("cat", "dog") and rows[1].image is None and rows[1].text == "A caption from a file."
    assert rows[2].text is None
    assert csv_rows.class_names == ("cat", "dog") and csv_rows.multi_label and not csv_rows.paired
    assert [r.line for r in rows] == [2, 3, 4]  # CSV lines count the header


@pytest.mark.parametrize("body, message", [
    ("id,label,image\nx1,cat,missing.png\n", "line 2: image file not found: "),
    ("id,label,image\n,cat,a.png\n", "line 2: no id"),
    ("id,label,image\nx1,cat,a.png\nx1,dog,a.png\n", "line 3: id 'x1' is already used on line 2"),
    ("id,label,image\nx1,,a.png\n", "line 2: no label"),
    ("id,split,label,image\nx1,dev,cat,a.png\n", "line 2: split 'dev' is not one of train, val, test"),
    ("id,label,image,text\nx1,cat,,\n", "line 2: the item has neither an image nor a text"),
    ("id,split,label,image\nx1,train,cat,a.png\nx2,,cat,a.png\n", "line 3: no split; give a split for every row"),
    ("id,lable,image\nx1,cat,a.png\n", "unknown column 'lable'"),
    ("id,label,image\nx1,cat,a.png,extra\n", "line 2: more fields than the header's 3"),
    ("id,label\n", "has no items"),
])
def test_csv_mistakes_are_one_line_naming_file_and_line(tmp_path, body, message):
    _files(tmp_path)
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(DataError) as error:
        read_manifest(tmp_path / "m.csv")
    text = str(error.value)
    assert message in text and "\n" not in text and "m.csv" in text


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 1: not JSON"),
    ("[1, 2]", "line 1: expected a JSON object, got list"),
    ('{"id": "x", "label": "c", "image": "a.png", "colour": 1}', "line 1: unknown key 'colour'"),
    ('{"id": 7, "label": "c", "image": "a.png"}', "line 1: id must be a string, got int 7"),
])
def test_jsonl_mistakes(tmp_path, line, message):
    _files(tmp_path)
    (tmp_path / "m.jsonl").write_text(line + "\n")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_manifest(tmp_path / "m.jsonl")


def test_other_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.tsv").write_text("id\tlabel\n")
    with pytest.raises(DataError, match="use a .csv or .jsonl file"):
        read_manifest(tmp_path / "m.tsv")


def test_seeded_split_by_class_and_the_manifests_own_split(tmp_path):
    _files(tmp_path)
    lines = ["id,label,image"] + [f"{c}{i},{c},a.png" for c in "abc" for i in range(20)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    manifest = read_manifest(tmp_path / "m.csv")
    first = assign_splits(manifest, val_fraction=0.1, test_fraction=0.2, seed=0)
    again = assign_splits(manifest, val_fraction=0.1, test_fraction=0.2, seed=0)
    other = assign_splits(manifest, val_fraction=0.1, test_fraction=0.2, seed=1)
    assert {k: [r.id for r in v] for k, v in first.items()} == {k: [r.id for r in v] for k, v in again.items()}
    assert [r.id for r in first["test"]] != [r.id for r in other["test"]]
    for c in "abc":  # stratified: 4 test, 2 val, 14 train per class of 20
        assert [sum(r.labels[0] == c for r in first[s]) for s in ("train", "val", "test")] == [14, 2, 4]
    # Within a split, manifest order is kept.
    assert [r.line for r in first["train"]] == sorted(r.line for r in first["train"])
    (tmp_path / "s.csv").write_text("id,split,label,image\nx,test,a,a.png\ny,train,a,a.png\n")
    own = assign_splits(read_manifest(tmp_path / "s.csv"), val_fraction=0.5, test_fraction=0.5, seed=0)
    assert {k: [r.id for r in v] for k, v in own.items()} == {"train": ["y"], "test": ["x"]}
