"""Every output of the commands on the sample data equals the recorded golden set byte for byte.

The set (``tests/golden_outputs/``) was recorded by ``tests/golden_set.py``; see its
docstring for what it holds and when to record it again.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from golden_set import (
    GOLDEN,
    content,
    digest,
    is_figure,
    is_text,
    matplotlib_version,
    outputs,
    produce,
)


@pytest.mark.slow
def test_every_output_equals_the_golden_set(tmp_path: Path) -> None:
    codes = produce(tmp_path)
    assert all(code == 0 for code in codes.values()), codes
    recorded = json.loads((GOLDEN / "manifest.json").read_text())
    manifest = recorded["files"]
    # Figures are byte-identical only under the matplotlib that recorded them; under
    # another release they must still be there and be figures (checked below).
    same_renderer = recorded["matplotlib"] == matplotlib_version()
    files = outputs(tmp_path)
    assert sorted(files) == sorted(manifest)
    differences = []
    for relative, path in files.items():
        data = content(path, tmp_path)
        if is_text(relative):  # the verbatim copy is the reference; its hash must agree
            expected = (GOLDEN / "files" / relative).read_bytes()
            assert digest(expected) == manifest[relative], f"{relative}: golden copy edited"
        if digest(data) == manifest[relative]:
            continue
        if is_figure(relative) and not same_renderer:
            assert data.startswith((b"\x89PNG", b"<?xml", b"%PDF")), relative
            continue
        if is_text(relative):
            diff = difflib.unified_diff(
                expected.decode().splitlines(), data.decode().splitlines(), lineterm="", n=1
            )
            differences.append(f"{relative}:\n" + "\n".join(list(diff)[:20]))
        else:
            differences.append(f"{relative}: SHA-256 differs")
    assert not differences, "\n\n".join(differences)
