"""The model's side of `mlimg predict --runner spark` (`mlimg_runtime.spark`), without Spark:
its functions take and give pandas frames, as `mapInPandas` hands them over."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlimg_runtime.spark import (
    ROW_ERROR,
    ROW_ID,
    output_schema_probe,
    predict_batches,
    prediction_frame,
)
from tests.protocol_models import make_protocol_model


@pytest.mark.parametrize(
    ("predictions", "columns", "first"),
    [
        (np.array([1, 2, 3]), ["prediction"], 1),
        ([0.5, 1.5, 2.5], ["prediction"], 0.5),
        (np.array(["a", "b", "c"]), ["prediction"], "a"),
        (pd.Series([7, 8, 9], index=[10, 11, 12]), ["prediction"], 7),
        (np.array([[0.2, 0.8], [0.6, 0.4], [1.0, 0.0]]), ["prediction_0", "prediction_1"], 0.2),
        (pd.DataFrame({"label": [1, 0, 1], "score": [0.9, 0.1, 0.7]}), ["label", "score"], 1),
        ({"label": (1, 0, 1), "score": np.array([0.9, 0.1, 0.7])}, ["label", "score"], 1),
    ],
)
def test_predictions_become_columns(predictions, columns: list[str], first) -> None:
    frame = prediction_frame(predictions, 3)
    assert list(frame.columns) == columns and len(frame) == 3
    assert list(frame.index) == [0, 1, 2]  # a Series' own index is dropped
    assert frame.iloc[0, 0] == first


def test_a_number_per_row_keeps_its_type() -> None:
    assert prediction_frame(np.array([1, 2], dtype=np.int32), 2)["prediction"].dtype == np.int32
    assert prediction_frame([1.0, 2.0], 2)["prediction"].dtype == np.float64


def test_rows_of_several_values_stay_one_value_per_row() -> None:
    ragged = prediction_frame([[1, 2], [3], [4, 5, 6]], 3)
    assert list(ragged.columns) == ["prediction"] and ragged["prediction"].tolist()[1] == [3]
    cube = prediction_frame(np.zeros((2, 3, 4)), 2)
    assert list(cube.columns) == ["prediction"] and cube["prediction"][0].shape == (3, 4)


def test_a_count_of_predictions_unlike_the_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="returned 2 predictions for 3 rows"):
        prediction_frame(np.array([1, 2]), 3)
    with pytest.raises(ValueError, match="returned 1 predictions for 3 rows"):
        prediction_frame(np.float64(1.0), 3)


@pytest.fixture(scope="module")
def picky_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Doubles column a; refuses a negative value (ValueError)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_protocol_model("picky", tmp_path_factory.mktemp("spark") / "picky")


def batches_of(values: list[float], size: int, consumed: list[int]) -> Iterator[pd.DataFrame]:
    """`values` as Spark hands them over: batches with each row's id; `consumed` counts them."""
    for start in range(0, len(values), size):
        consumed.append(start)
        part = values[start : start + size]
        yield pd.DataFrame(
            {"id": range(start, start + len(part)), "a": part, ROW_ID: range(100, 100 + len(part))}
        )


def test_each_batch_gives_its_kept_columns_beside_its_predictions(picky_model: Path) -> None:
    run = predict_batches(str(picky_model), keep=["id"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pd.concat(run(batches_of([1.0, 2.0, 3.0, 4.0, 5.0], 2, [])), ignore_index=True)
    assert list(out.columns) == ["id", "prediction"]
    assert out["id"].tolist() == [0, 1, 2, 3, 4]
    assert out["prediction"].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]


def test_csv_text_is_typed_by_the_signature(picky_model: Path) -> None:
    run = predict_batches(str(picky_model), keep=[], csv_strings=True)
    text = pd.DataFrame({"a": ["1.5", "2"], ROW_ID: [0, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert next(run(iter([text])))["prediction"].tolist() == [3.0, 4.0]
        unfit = predict_batches(str(picky_model), keep=[], csv_strings=True)
        with pytest.raises(RuntimeError, match="does not fit the model's signature"):
            next(unfit(iter([pd.DataFrame({"a": ["one"], ROW_ID: [0]})])))


def test_a_refused_row_is_named_by_its_id(picky_model: Path) -> None:
    run = predict_batches(str(picky_model), keep=["id"])
    values = [1.0, 2.0, 3.0, -4.0, 5.0]
    with warnings.catch_warnings(), pytest.raises(RuntimeError) as refused:
        warnings.simplefilter("ignore")
        list(run(batches_of(values, 5, [])))
    # The batch's fourth row: its id is 103 (the ids here start at 100).
    assert str(refused.value).startswith(f"{ROW_ERROR}:103:")
    assert "a must not be negative" in str(refused.value)


def test_the_probe_reads_every_batch_and_gives_the_output_schema(picky_model: Path) -> None:
    """A Python worker that leaves input unread is not reused by Spark: the next job's worker
    would load the model again."""
    consumed: list[int] = []
    probe = output_schema_probe(str(picky_model), keep=["id"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answers = list(probe(batches_of([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, consumed)))
    assert consumed == [0, 2, 4]
    assert len(answers) == 1
    schema = pa.ipc.read_schema(pa.py_buffer(answers[0]["schema"][0]))
    assert schema.names == ["id", "prediction"]
    assert schema.field("prediction").type == pa.float64()


def test_loading_ahead_of_the_job_reads_all_its_input_and_gives_nothing(picky_model: Path) -> None:
    from mlimg_runtime import spark

    spark._models.pop(str(picky_model), None)
    consumed: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = list(spark.load_in_worker(str(picky_model))(batches_of([1.0, 2.0, 3.0], 1, consumed)))
    assert out == [] and consumed == [0, 1, 2]
    assert str(picky_model) in spark._models  # the worker's next task finds it loaded
