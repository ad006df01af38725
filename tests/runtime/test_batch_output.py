"""`mlimg predict`'s CSV output: columns a user loads back into pandas."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from mlimg_runtime.batch import _CsvWriter


def written(*chunks: object) -> str:
    sink = io.StringIO()
    writer = _CsvWriter(sink)
    for chunk in chunks:
        writer.write(chunk)
    return sink.getvalue()


def test_one_value_per_row_is_one_prediction_column() -> None:
    assert written(np.array([1, 2]), np.array([3])) == "prediction\n1\n2\n3\n"


def test_several_values_per_row_are_a_column_each() -> None:
    text = written(np.array([[0.25, 0.75], [0.5, 0.5]]), [[1.0, 0.0]])
    assert text == "prediction_0,prediction_1\n0.25,0.75\n0.5,0.5\n1.0,0.0\n"


def test_records_and_frames_keep_their_own_names() -> None:
    assert written([{"label": "a", "score": 1}]) == "label,score\na,1\n"
    assert written(pd.DataFrame({"sum": [3]})) == "sum\n3\n"


def test_an_array_per_row_is_json_text() -> None:
    frame = pd.read_csv(io.StringIO(written(np.arange(8).reshape(2, 2, 2))))
    cells = [json.loads(cell) for cell in frame["prediction"]]
    assert cells == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
