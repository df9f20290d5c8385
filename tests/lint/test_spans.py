"""Line numbering of the snippet machinery agrees with the Python tokenizer's."""

from __future__ import annotations

import pytest

from kvguard.lint.spans import line_offsets, source_lines


@pytest.mark.parametrize(
    "text", ["", "a", "a\n", "a\nb", "a\n\nb\n", "\n", "x\ny\n\n", "a\r\nb\rc\n", "a\x0cb\nc"]
)
def test_line_offsets_start_each_tokenizer_line(text: str) -> None:
    offsets = line_offsets(text)
    lines = source_lines(text)
    assert len(offsets) == len(lines) + 1
    assert offsets[-1] == len(text) + 1
    for number, line in enumerate(lines):
        assert text[offsets[number] :].startswith(line)
