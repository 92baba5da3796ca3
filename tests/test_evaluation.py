"""mass_evaluate: Dice/HD95 against hand-computed cases, folder evaluation, summaries, classification, the CLI."""
import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from mass_nn.cli import evaluate
from mass_nn.errors import MassError
from mass_nn.evaluation.classification_evaluation import (evaluate_classification, read_classification_predictions,
                                                          write_classification_predictions)
from mass_nn.evaluation.metrics import dice_score, hd95, label_map_metrics
from mass_nn.evaluation.segmentation_evaluation import evaluate_segmentation_folders, write_summary
from mass_nn.evaluation.tables import markdown_table, mean_std
from mass_nn.io.case_labels import CaseLabels, write_case_labels
from mass_nn.io.image_io import ImageGeometry, write_image

SPACING_ZYX = (0.5, 1.0, 3.0)


def _cube(shape=(10, 10, 10), start=(2, 2, 2), size=4, value=1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[tuple(slice(s, s + size) for s in start)] = value
    return out


def _geometry(shape_zyx, spacing_zyx=SPACING_ZYX) -> ImageGeometry:
    return ImageGeometry(spacing_xyz=tuple(spacing_zyx[::-1]), origin_xyz=(0.0, 0.0, 0.0),
                         direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size_xyz=tuple(shape_zyx[::-1]))


# --- metrics ------------------------------------------------------------------------------------------------------

def test_shifted_cubes_with_anisotropic_spacing():
    # 4^3 cubes shifted by one voxel: overlap 48 of 64 voxels -> Dice 0.75. Of the 112 pooled surface distances,
    # 72 are 0, 8 are the smallest spacing and 32 are the spacing along the shift (worked out in
    # documentation/evaluation.md), so the 95th percentile is the spacing along the shift axis.
    reference = _cube()
    along_x, along_z = _cube(start=(2, 2, 3)), _cube(start=(3, 2, 2))
    assert dice_score(along_x, reference) == pytest.approx(0.75)
    assert hd95(along_x, reference, SPACING_ZYX) == pytest.approx(3.0)
    assert hd95(along_z, reference, SPACING_ZYX) == pytest.approx(0.5)
    result = label_map_metrics(along_x * 2, reference * 2, {"background": 0, "organ": 2}, SPACING_ZYX)
    assert result == {"organ": {"dice": pytest.approx(0.75), "hd95": pytest.approx(3.0), "reference_voxels": 64,
                                "predicted_voxels": 64}}


def test_parallel_slabs_give_their_distance():
    reference, prediction = np.zeros((8, 6, 6), np.uint8), np.zeros((8, 6, 6), np.uint8)
    reference[2], prediction[5] = 1, 1
    assert hd95(prediction, reference, (2.0, 0.7, 0.7)) == pytest.approx(6.0)
    assert dice_score(prediction, reference) == 0.0


def _brute_force_hd95(prediction, reference, spacing):
    structure = ndimage.generate_binary_structure(3, 1)
    surfaces = [m & ~ndimage.binary_erosion(m, structure, border_value=0) for m in (prediction, reference)]
    points = [np.argwhere(s) * np.asarray(spacing) for s in surfaces]
    distances = cdist(points[0], points[1])
    return float(np.percentile(np.concatenate([distances.min(axis=1), distances.min(axis=0)]), 95))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force_including_masks_on_the_volume_edge(seed):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((14, 16, 12)), 2)
    reference = field > 0.05
    prediction = ndimage.shift(field, (1, -1, 0), order=1, mode="nearest") > 0.0
    spacing = (2.5, 0.8, 1.3)
    expected = _brute_force_hd95(prediction, reference, spacing)
    assert hd95(prediction, reference, spacing) == pytest.approx(expected)
    labels = label_map_metrics(prediction.astype(np.uint8), reference.astype(np.float32), {"a": 1}, spacing)
    assert labels["a"]["hd95"] == pytest.approx(expected)
    # a small object far from the edge: the cropped computation still equals the whole-volume brute force
    small_ref, small_pred = np.zeros((30, 30, 30), bool), np.zeros((30, 30, 30), bool)
    small_ref[10:14, 12:15, 11:13] = True
    small_pred[11:15, 12:16, 10:13] = rng.random((4, 4, 3)) > 0.3
    assert hd95(small_pred, small_ref, spacing) == pytest.approx(_brute_force_hd95(small_pred, small_ref, spacing))


def test_empty_conventions():
    empty, cube = np.zeros((6, 6, 6), np.uint8), _cube((6, 6, 6), (1, 1, 1), 2)
    assert math.isnan(dice_score(empty, empty)) and math.isnan(hd95(empty, empty, (1, 1, 1)))
    assert dice_score(empty, cube) == 0.0 and math.isnan(hd95(cube, empty, (1, 1, 1)))
    result = label_map_metrics(cube, empty, {"bg": 0, "one": 1, "absent": 7}, (1, 1, 1))
    assert set(result) == {"one", "absent"}
    assert result["one"]["dice"] == 0.0 and math.isnan(result["one"]["hd95"])
    assert result["one"]["predicted_voxels"] == 8 and result["one"]["reference_voxels"] == 0
    assert math.isnan(result["absent"]["dice"]) and math.isnan(result["absent"]["hd95"])
    no_hd = label_map_metrics(cube, cube, {"one": 1}, (1, 1, 1), hd95=False)
    assert no_hd["one"]["dice"] == 1.0 and math.isnan(no_hd["one"]["hd95"])


def test_label_map_metrics_rejects_bad_input():
    cube = _cube()
    with pytest.raises(ValueError, match="differ in shape"):
        label_map_metrics(cube, cube[:-1], {"a": 1}, SPACING_ZYX)
    with pytest.raises(ValueError, match="whole numbers"):
        label_map_metrics(cube * 0.5, cube, {"a": 1}, SPACING_ZYX)
    with pytest.raises(ValueError, match="negative"):
        label_map_metrics(cube.astype(np.int16) - 1, cube, {"a": 1}, SPACING_ZYX)
    with pytest.raises(ValueError, match="spacing"):
        label_map_metrics(cube, cube, {"a": 1}, (1.0, 0.0, 1.0))


# --- tables -------------------------------------------------------------------------------------------------------

def test_markdown_table_and_mean_std():
    table = markdown_table(["case", "a|b"], [["x", 0.5], ["long name", float("nan")], ["short"]])
    lines = table.splitlines()
    assert lines[0] == "| case      | a\\|b   |"
    assert lines[1] == "| --------- | ------ |"
    assert lines[2] == "| x         | 0.5000 |" and lines[3] == "| long name | n/a    |"
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError):
        markdown_table(["one"], [[1, 2]])
    assert mean_std([0.82, 0.84]) == "83.0 (1.0)"
    assert mean_std([0.5, float("nan"), None]) == "50.0 (0.0)"
    assert mean_std([float("nan")]) == "n/a" and mean_std([]) == "n/a"
    assert mean_std([1.0, 3.0], scale=1.0, digits=2, ddof=1) == "2.00 (1.41)"


# --- folder evaluation --------------------------------------------------------------------------------------------

def _write(array, path, spacing_zyx=SPACING_ZYX):
    write_image(array, _geometry(array.shape, spacing_zyx), path)


@pytest.fixture
def folders(tmp_path):
    """case_a: perfect; case_b: organ shifted along x, no tumour anywhere; case_c: spacing mismatch;
    extra: prediction only; lonely: reference only."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    two_labels = _cube() + _cube(start=(3, 3, 3), size=2)  # organ 1 with a tumour 2 inside
    _write(two_labels, pred / "case_a.nii.gz")
    _write(two_labels, ref / "case_a.nrrd")
    _write(_cube(start=(2, 2, 3)), pred / "case_b.nii.gz")
    _write(_cube(), ref / "case_b.nii.gz")
    _write(_cube(), pred / "case_c.nii.gz", (1.0, 1.0, 1.0))
    _write(_cube(), ref / "case_c.nii.gz")
    _write(_cube(), pred / "extra.nii.gz")
    _write(_cube(), ref / "lonely.mha")
    (pred / "notes.txt").write_text("not an image")
    return pred, ref


def test_folder_evaluation_with_missing_files_and_a_geometry_mismatch(folders):
    pred, ref = folders
    summary = evaluate_segmentation_folders(pred, ref, {"background": 0, "organ": 1, "tumour": 2})
    assert [c["case_id"] for c in summary["per_case"]] == ["case_a", "case_b"] and summary["num_cases"] == 2
    case_b = summary["per_case"][1]["metrics"]
    assert case_b["organ"]["dice"] == pytest.approx(0.75) and case_b["organ"]["hd95"] == pytest.approx(3.0)
    assert math.isnan(case_b["tumour"]["dice"])
    assert summary["mean"]["organ"]["dice"] == pytest.approx(0.875)
    assert summary["mean"]["organ"]["hd95"] == pytest.approx(1.5)
    assert summary["mean"]["tumour"] == {"dice": 1.0, "hd95": 0.0, "dice_cases": 1, "hd95_cases": 1}
    assert summary["mean_dice"] == pytest.approx((0.875 + 1.0) / 2)
    assert len(summary["errors"]) == 1 and summary["errors"][0]["case_id"] == "case_c"
    message = summary["errors"][0]["message"]
    assert str(pred / "case_c.nii.gz") in message and str(ref / "case_c.nii.gz") in message and "spacing" in message
    assert summary["predictions_without_reference"] == ["extra.nii.gz"]
    assert summary["references_without_prediction"] == ["lonely.mha"]


def test_summary_files(folders, tmp_path):
    pred, ref = folders
    summary = evaluate_segmentation_folders(pred, ref, {"organ": 1, "tumour": 2}, hd95=False)
    json_path, md_path = write_summary(summary, tmp_path / "out")
    written = json.loads(json_path.read_text())
    assert written["per_case"][1]["metrics"]["tumour"]["dice"] is None  # NaN is written as null
    assert written["per_case"][0]["metrics"]["organ"]["hd95"] is None and written["hd95"] is False
    assert written["mean"]["organ"]["dice"] == pytest.approx(0.875)
    text = md_path.read_text()
    assert "| case_b     | 75.0        | n/a         |" in text
    assert "| mean (std) | 87.5 (12.5) | 100.0 (0.0) |" in text
    assert "HD95" not in text
    assert "prediction without reference: extra.nii.gz" in text and "case_c" in text
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_labels_default_to_the_reference_values(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    _write(_cube(value=3) + _cube(start=(0, 0, 0), size=1, value=5), pred / "a.nii.gz")
    _write(_cube(value=3), ref / "a.nii.gz")
    summary = evaluate_segmentation_folders(pred, ref, None, num_processes=1)
    assert summary["labels"] == {"3": 3} and summary["mean_dice"] == 1.0
    assert any("[5]" in w for w in summary["warnings"])


def test_folder_evaluation_in_parallel_matches_serial(folders):
    pred, ref = folders
    serial = evaluate_segmentation_folders(pred, ref, {"organ": 1})
    parallel = evaluate_segmentation_folders(pred, ref, {"organ": 1}, num_processes=2)
    assert parallel["per_case"] == serial["per_case"] and len(parallel["errors"]) == 1


def test_folder_evaluation_errors_when_nothing_matches(tmp_path):
    with pytest.raises(MassError, match="prediction folder not found"):
        evaluate_segmentation_folders(tmp_path / "nope", tmp_path, {"a": 1})
    _write(_cube(), tmp_path / "pred" / "a.nii.gz")
    _write(_cube(), tmp_path / "ref" / "b.nii.gz")
    with pytest.raises(MassError, match="has a reference with the same case id"):
        evaluate_segmentation_folders(tmp_path / "pred", tmp_path / "ref", {"a": 1})


# --- classification -----------------------------------------------------------------------------------------------

def test_classification_round_trip_and_auc(tmp_path):
    ids = ["c0", "c1", "c2", "c3", "c4"]
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1],
                              [0.1 / 3, 0.6, 1 / 3]])
    write_classification_predictions(tmp_path / "p.csv", ids, probabilities, ["0", "1", "2"])
    read = read_classification_predictions(tmp_path / "p.csv")
    assert read.case_ids == ids and read.class_names == ["0", "1", "2"]
    assert np.array_equal(read.probabilities, probabilities)  # written exactly
    write_case_labels(CaseLabels("multiclass", ["0", "1", "2"], {"c0": 0, "c1": 1, "c2": 2, "c3": 1, "c4": 1,
                                                                 "c9": 0}, "grade"), tmp_path / "labels.csv")
    result = evaluate_classification(tmp_path / "p.csv", tmp_path / "labels.csv")
    # class 1 positives c1, c3, c4 score 0.8, 0.4, 0.6 against negatives 0.2, 0.3: every pair ranked right
    assert result["auc"] == {"0": pytest.approx(1.0), "1": pytest.approx(1.0), "2": pytest.approx(1.0)}
    assert result["mean_auc"] == pytest.approx(1.0)
    assert result["accuracy"] == pytest.approx(0.8)  # c3's argmax is class 0
    assert result["num_cases"] == 5 and result["labelled_cases_without_prediction"] == 1
    # columns in another order are matched by name
    write_classification_predictions(tmp_path / "q.csv", ids, probabilities[:, ::-1], ["2", "1", "0"])
    assert evaluate_classification(tmp_path / "q.csv", tmp_path / "labels.csv")["auc"] == result["auc"]


def test_multilabel_auc_with_a_tie(tmp_path):
    write_case_labels(CaseLabels("multilabel", ["a", "b"], {"x": [1, 0], "y": [0, 1], "z": [1, 1]}),
                      tmp_path / "labels.csv")
    write_classification_predictions(tmp_path / "p.csv", ["x", "y", "z"], [[0.9, 0.5], [0.2, 0.5], [0.4, 0.7]],
                                     ["a", "b"])
    result = evaluate_classification(tmp_path / "p.csv", tmp_path / "labels.csv")
    # b: positives y (0.5), z (0.7) vs negative x (0.5): one win and one tie -> 0.75
    assert result["auc"] == {"a": pytest.approx(1.0), "b": pytest.approx(0.75)}
    # wrong decisions at threshold 0.5: x's b (0.5 counts as yes) and z's a (0.4 counts as no)
    assert result["accuracy"] == pytest.approx(4 / 6)


def test_classification_errors_name_the_files(tmp_path):
    write_case_labels(CaseLabels("multiclass", ["no", "yes"], {"c0": 0, "c1": 1}, "y"), tmp_path / "labels.csv")
    write_classification_predictions(tmp_path / "p.csv", ["c0", "c5"], [[0.6, 0.4], [0.3, 0.7]], ["no", "yes"])
    with pytest.raises(MassError, match=r"p\.csv have no label in .*labels\.csv: \['c5'\]"):
        evaluate_classification(tmp_path / "p.csv", tmp_path / "labels.csv")
    write_classification_predictions(tmp_path / "p.csv", ["c0", "c1"], [[0.6, 0.4], [0.3, 0.7]], ["0", "1"])
    with pytest.raises(MassError, match=r"class columns \['0', '1'\] do not match the classes \['no', 'yes'\]"):
        evaluate_classification(tmp_path / "p.csv", tmp_path / "labels.csv")
    (tmp_path / "bad.csv").write_text("case_id,no,yes\nc0,0.5,high\n")
    with pytest.raises(MassError, match=r"bad\.csv, line 2"):
        read_classification_predictions(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="w.csv"):
        write_classification_predictions(tmp_path / "w.csv", ["a"], [[0.5, 0.5]], ["only"])


# --- CLI ----------------------------------------------------------------------------------------------------------

def test_cli_segmentation(folders, tmp_path, capsys):
    pred, ref = folders
    labels_json = tmp_path / "dataset.json"
    labels_json.write_text(json.dumps({"labels": {"background": 0, "organ": 1, "tumour": 2}}))
    code = evaluate.main(["SEGMENTATION", "-pred", str(pred), "-ref", str(ref), "--labels", str(labels_json),
                          "-o", str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # case_c could not be evaluated
    assert "| case_b" in captured.out and "2 case(s), 2 label(s): mean Dice 93.8 %, mean HD95 0.75 mm" in captured.out
    assert "error: case case_c" in captured.err and "warning: 1 reference(s) without prediction" in captured.err
    assert (tmp_path / "out" / "summary.json").is_file() and (tmp_path / "out" / "summary.md").is_file()
    (pred / "case_c.nii.gz").unlink()
    assert evaluate.main(["SEGMENTATION", "-pred", str(pred), "-ref", str(ref), "--no-hd95", "--no-progress"]) == 0
    written = json.loads((pred / "summary.json").read_text())
    assert written["labels"] == {"1": 1, "2": 2} and written["labels_source"] == "references"
    assert written["mean_hd95"] is None


def test_cli_segmentation_labels_from_a_dataset(folders, tmp_path, capsys):
    pred, ref = folders
    dataset = tmp_path / "raw" / "Dataset977_Eval"
    dataset.mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "numTraining": 0,
                                                      "file_ending": ".nii.gz", "labels": {"background": 0,
                                                                                           "liver": 1}}))
    (pred / "case_c.nii.gz").unlink()
    assert evaluate.main(["SEGMENTATION", "-pred", str(pred), "-ref", str(ref), "-d", "977", "--no-progress",
                          "--raw", str(tmp_path / "raw"), "--preprocessed", str(tmp_path / "pre"),
                          "--results", str(tmp_path / "res")]) == 0
    assert "| case_a     | 100.0       |" in capsys.readouterr().out


def test_cli_reports_bad_input(folders, tmp_path, capsys):
    pred, ref = folders
    assert evaluate.main(["SEGMENTATION", "-pred", str(tmp_path / "missing"), "-ref", str(ref)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing: prediction folder not found" in err and "Traceback" not in err
    (tmp_path / "nolabels.json").write_text("{}")
    assert evaluate.main(["SEGMENTATION", "-pred", str(pred), "-ref", str(ref), "--labels",
                          str(tmp_path / "nolabels.json")]) == 1
    assert 'nolabels.json: has no "labels"' in capsys.readouterr().err
    assert evaluate.main(["SEGMENTATION", "-pred", str(pred), "-ref", str(ref), "-np", "0"]) == 1
    assert "-np must be at least 1" in capsys.readouterr().err
    assert evaluate.main(["CLASSIFICATION", "-pred", str(tmp_path / "none.csv"), "-ref", str(tmp_path / "l.csv")]) == 1
    assert "error: " in capsys.readouterr().err


def test_cli_classification(tmp_path, capsys):
    write_case_labels(CaseLabels("multiclass", ["0", "1"], {"a": 0, "b": 1, "c": 1}, "y"), tmp_path / "labels.csv")
    write_classification_predictions(tmp_path / "run" / "p.csv", ["a", "b", "c"],
                                     [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], ["0", "1"])
    assert evaluate.main(["CLASSIFICATION", "-pred", str(tmp_path / "run" / "p.csv"), "-ref",
                          str(tmp_path / "labels.csv")]) == 0
    out = capsys.readouterr().out
    assert "| mean  | 100.0 |" in out and "3 case(s), 2 class(es): mean AUC 100.0 %, accuracy 66.7 %" in out
    written = json.loads((tmp_path / "run" / "classification_summary.json").read_text())
    assert written["mean_auc"] == 1.0 and written["kind"] == "multiclass"
    assert "## AUC (%)" in (tmp_path / "run" / "classification_summary.md").read_text()


def test_explicit_case_pairs(folders):
    from mass_nn.evaluation.segmentation_evaluation import evaluate_case_pairs
    pred, ref = folders
    summary = evaluate_case_pairs([("b", pred / "case_b.nii.gz", ref / "case_b.nii.gz"),
                                   ("c", pred / "case_c.nii.gz", ref / "case_c.nii.gz")], {"organ": 1})
    assert [c["case_id"] for c in summary["per_case"]] == ["b"] and summary["errors"][0]["case_id"] == "c"
    assert summary["mean_dice"] == pytest.approx(0.75) and summary["prediction_folder"] == ""
    assert summary["references_without_prediction"] == []


def test_segmentation_figure_lays_panels_out_in_rows(tmp_path):
    from PIL import Image

    from mass_nn.evaluation.segmentation_figure import write_segmentation_figure
    from mass_nn.io.image_io import ImageGeometry, write_image
    geometry = ImageGeometry(spacing_xyz=(1.0, 1.0, 1.0), origin_xyz=(0.0, 0.0, 0.0),
                             direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size_xyz=(8, 8, 4))
    image = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    label = np.zeros((4, 8, 8), dtype=np.uint8)
    label[2, 2:5, 2:5] = 1
    write_image(image, geometry, tmp_path / "image.nii.gz")
    write_image(label, geometry, tmp_path / "label.nii.gz")
    panels = [(f"panel {i}", tmp_path / "image.nii.gz", tmp_path / "label.nii.gz") for i in range(5)]
    write_segmentation_figure(panels, tmp_path / "row.png")
    write_segmentation_figure(panels, tmp_path / "grid.png", columns=2)
    row, grid = Image.open(tmp_path / "row.png").size, Image.open(tmp_path / "grid.png").size
    assert row[0] > row[1] and grid[1] > grid[0]  # 5 x 1 is wide; 2 columns x 3 rows is tall
