"""Cache-named attributes annotated with a project class that indexes itself
(``ProjectIndex.wrapper_attributes``): ``dma_kv_cache: SmemWrapper``, over several files."""

from __future__ import annotations

import textwrap

from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, scan_source
from tests.lint.test_catalog import SEVERITY

WRAPPER = """
class SmemWrapper:
    def __getitem__(self, indices):
        return self.data[position(self.shape, indices)]
"""
HOLDER = """
import dataclasses

from pkg.wrapper import SmemWrapper


@dataclasses.dataclass
class Schedule:
    dma_kv_cache: SmemWrapper
"""
USER = """
def copy_pages(schedule, step, dst):
    source = schedule.dma_kv_cache[step, 0]
    size = schedule.dma_kv_cache[step, 1]
    start_copy(source, dst, size)
"""


def _flagged(files: dict[str, str]) -> list[tuple[str, int]]:
    """KVG001 (path, line) over a project of ``files``, the index built from all of them."""
    config = Config()
    names = kv_names(config)
    texts = {path: textwrap.dedent(text) for path, text in files.items()}
    facts = {path: scan_source(text, path, names) for path, text in texts.items()}
    index = build_index(facts, config)
    return sorted(
        (path, f.line)
        for path, text in texts.items()
        for f in lint_source(text, path, config, index, SEVERITY, facts[path])
        if f.code == "KVG001"
    )


def test_an_attribute_of_a_self_indexing_class_is_no_tensor_across_files() -> None:
    files = {"pkg/wrapper.py": WRAPPER, "pkg/schedule.py": HOLDER, "pkg/user.py": USER}
    assert _flagged(files) == []


def test_the_class_must_be_the_projects_and_index_itself() -> None:
    # not defined in the project: nothing says what indexing it does
    assert _flagged({"pkg/schedule.py": HOLDER, "pkg/user.py": USER}) == [
        ("pkg/user.py", 3),
        ("pkg/user.py", 4),
    ]
    # defined, but with no __getitem__ of its own or of a base
    plain = "class SmemWrapper:\n    def load(self):\n        return self.data\n"
    files = {"pkg/wrapper.py": plain, "pkg/schedule.py": HOLDER, "pkg/user.py": USER}
    assert len(_flagged(files)) == 2
    # a tensor subclass indexes as a tensor, whatever it overrides
    tensor = "class SmemWrapper(torch.Tensor):\n" + WRAPPER.split("\n", 2)[2]
    files = {"pkg/wrapper.py": tensor, "pkg/schedule.py": HOLDER, "pkg/user.py": USER}
    assert len(_flagged(files)) == 2


def test_an_inherited_getitem_counts() -> None:
    derived = WRAPPER + "\n\nclass PaddedWrapper(SmemWrapper):\n    pass\n"
    holder = HOLDER.replace("SmemWrapper", "PaddedWrapper")
    files = {"pkg/wrapper.py": derived, "pkg/schedule.py": holder, "pkg/user.py": USER}
    assert _flagged(files) == []


def test_annotations_that_disagree_say_nothing() -> None:
    other = "\nclass Window:\n    dma_kv_cache: torch.Tensor\n"
    files = {
        "pkg/wrapper.py": WRAPPER,
        "pkg/schedule.py": HOLDER,
        "pkg/window.py": other,
        "pkg/user.py": USER,
    }
    assert len(_flagged(files)) == 2
