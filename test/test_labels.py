"""The label table is consistent and its helpers invert each other."""

import json

import numpy as np
import pytest

from seg_perception.labels import CITYSCAPES, IGNORE_ID, load_label_table


def test_cityscapes_has_34_labels_with_unique_ids():
    ids = [lab.id for lab in CITYSCAPES.labels]
    assert ids == list(range(34))
    assert len({lab.name for lab in CITYSCAPES.labels}) == 34


def test_train_ids_map_back_and_forth():
    assert CITYSCAPES.num_classes == 19
    for t in range(19):
        label_id = CITYSCAPES.train_to_label[t]
        assert CITYSCAPES.label_to_train[label_id] == t
    # every label id maps to a trainId or void
    for lab in CITYSCAPES.labels:
        assert CITYSCAPES.label_to_train[lab.id] == lab.train_id
    train = np.arange(19, dtype=np.uint8).reshape(1, 19)
    np.testing.assert_array_equal(CITYSCAPES.to_train_ids(CITYSCAPES.to_label_ids(train)), train)
    assert CITYSCAPES.to_label_ids(np.array([IGNORE_ID]))[0] == 0


def test_train_colours_distinct_and_things_are_the_eight_cityscapes_things():
    colours = {tuple(c) for c in CITYSCAPES.train_colors.tolist()}
    assert len(colours) == 19
    things = [CITYSCAPES.train_names[t] for t in CITYSCAPES.thing_train_ids]
    assert things == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert {CITYSCAPES.train_category[t] for t in CITYSCAPES.thing_train_ids} == {
        "human",
        "vehicle",
    }


def test_colorize_uses_table_colours_and_void_black():
    ids = np.array([[0, 13], [255, 10]], dtype=np.uint8)
    rgb = CITYSCAPES.colorize(ids)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 64, 128)  # road
    assert tuple(rgb[0, 1]) == (0, 0, 142)  # car
    assert tuple(rgb[1, 0]) == (0, 0, 0)
    assert tuple(rgb[1, 1]) == (70, 130, 180)  # sky


def test_json_documents_table_and_encodings():
    doc = json.loads(CITYSCAPES.to_json())
    assert len(doc["train_ids"]) == 19
    assert "32SC1" in doc["encodings"]["segmentation/panoptic"]
    assert doc["train_ids"][11]["is_thing"] is True


def test_custom_table_from_yaml(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(
        "labels:\n"
        "  - {name: bg, id: 0, train_id: 255, category: void, category_id: 0, has_instances: false,"
        " ignore_in_eval: true, color: [0, 0, 0]}\n"
        "  - {name: road, id: 1, train_id: 0, category: flat, category_id: 1, has_instances: false,"
        " ignore_in_eval: false, color: [1, 2, 3]}\n"
        "  - {name: car, id: 2, train_id: 1, category: vehicle, category_id: 2, "
        " has_instances: true,"
        " ignore_in_eval: false, color: [4, 5, 6]}\n"
    )
    table = load_label_table(path)
    assert table.num_classes == 2 and table.thing_train_ids == (1,)
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels:\n  - {name: x, id: 0}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_label_table(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_label_table(tmp_path / "nope.yaml")
