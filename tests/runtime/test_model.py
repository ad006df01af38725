"""The model module stands apart from the transport: batch inference and other serving
engines use it without flask or gunicorn."""

from __future__ import annotations

import ast
import subprocess
import sys


def test_model_scoring_codecs_and_batch_import_no_web_framework() -> None:
    code = (
        "import sys, mlimg_runtime.model, mlimg_runtime.codecs, mlimg_runtime.batching, "
        "mlimg_runtime.batch, mlimg_runtime.contract, mlimg_runtime.scoring; "
        "print(sorted(m for m in ('flask', 'werkzeug', 'gunicorn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_contract_is_standard_library_only() -> None:
    code = (
        "import sys; before = set(sys.modules); import mlimg_runtime.contract; "
        "print(sorted(m.split('.')[0] for m in set(sys.modules) - before))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    imported = set(ast.literal_eval(result.stdout))
    assert imported <= {"mlimg_runtime", *sys.stdlib_module_names}, imported
