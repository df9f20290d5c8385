"""Attributes that hold an object of a class that indexes itself (``kvguard/lint/wrappers.py``):
cleared only where the code says which class the receiver is and what its indexing does."""

from __future__ import annotations

import textwrap

import pytest

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

    def page(self, step, dst):
        source = self.dma_kv_cache[step, 0]
        start_copy(source, dst)
"""
USER = """
from pkg.schedule import Schedule


def copy_pages(schedule: Schedule, step, dst):
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


def _project(**replaced: str) -> dict[str, str]:
    files = {"pkg/wrapper.py": WRAPPER, "pkg/schedule.py": HOLDER, "pkg/user.py": USER}
    files.update({f"pkg/{name}.py": text for name, text in replaced.items()})
    return files


def test_self_and_an_annotated_parameter_hold_the_wrapper_across_files() -> None:
    assert _flagged(_project()) == []


def test_an_inherited_getitem_counts() -> None:
    derived = WRAPPER + "\n\nclass PaddedWrapper(SmemWrapper):\n    pass\n"
    holder = HOLDER.replace("SmemWrapper", "PaddedWrapper")
    assert _flagged(_project(wrapper=derived, schedule=holder)) == []


ALL = [("pkg/schedule.py", 12), ("pkg/user.py", 6), ("pkg/user.py", 7)]


@pytest.mark.parametrize(
    ("wrapper", "why"),
    [
        ("class SmemWrapper:\n    def load(self):\n        return self.data\n", "no __getitem__"),
        (
            "class SmemWrapper:\n    def __getitem__(self, key):\n        return self.data[key]\n",
            "a pass-through: a raw split by another name",
        ),
        (
            "class SmemWrapper:\n    def __getitem__(self, key):\n"
            "        return self.data.__getitem__(key)\n",
            "a pass-through by call",
        ),
        (
            "class SmemWrapper(Protocol):\n    def __getitem__(self, index) -> torch.Tensor: ...\n",
            "a Protocol's stub",
        ),
        (
            "class SmemWrapper:\n    def __getitem__(self, index):\n"
            "        raise NotImplementedError\n",
            "an abstract stub",
        ),
        (
            "class SmemWrapper(torch.Tensor):\n" + WRAPPER.split("\n", 2)[2],
            "a tensor subclass",
        ),
        (
            "from pkg.base import Buffer\n\n\nclass SmemWrapper(Buffer):\n"
            + WRAPPER.split("\n", 2)[2],
            "a base kvguard cannot see (it may be a tensor)",
        ),
    ],
)
def test_a_class_that_does_not_index_itself_clears_nothing(wrapper: str, why: str) -> None:
    assert _flagged(_project(wrapper=wrapper)) == ALL, why


def test_the_class_must_be_the_projects() -> None:
    files = _project()
    del files["pkg/wrapper.py"]
    assert _flagged(files) == ALL
    # a class of that name elsewhere in the project is not the one imported from a library
    holder = HOLDER.replace("from pkg.wrapper import", "from extlib import")
    assert _flagged(_project(schedule=holder)) == ALL


def test_other_receivers_of_the_attribute_name_stay_flagged() -> None:
    # the name alone says nothing: an unannotated parameter, another class's attribute,
    # a tensor method on an unrelated holder
    other = """
    def copy_pages(schedule, layer, step):
        source = schedule.dma_kv_cache[step, 0]
        key_cache, value_cache = layer.dma_kv_cache.unbind(0)
        return source


    class Window:
        def views(self, step):
            self.key_cache = self.dma_kv_cache[step, 0]
    """
    assert _flagged(_project(user=other)) == [
        ("pkg/user.py", 3),
        ("pkg/user.py", 4),
        ("pkg/user.py", 10),
    ]


def test_a_binding_or_a_rebound_parameter_contradicts_the_annotation() -> None:
    holder = HOLDER.replace(
        "    def page(",
        "    def reset(self, n):\n        self.dma_kv_cache = torch.empty(2, n)\n\n    def page(",
    )
    assert ("pkg/schedule.py", 15) in _flagged(_project(schedule=holder))
    user = USER.replace("    source =", "    schedule = other_schedule()\n    source =")
    assert ("pkg/user.py", 7) in _flagged(_project(user=user))


def test_annotations_that_disagree_in_a_lineage_say_nothing() -> None:
    sub = """
    import torch

    from pkg.schedule import Schedule


    class TensorSchedule(Schedule):
        dma_kv_cache: torch.Tensor

        def page(self, step, dst):
            source = self.dma_kv_cache[step, 0]
            start_copy(source, dst)
    """
    assert ("pkg/sub.py", 11) in _flagged(_project(sub=sub))


def test_a_subclass_that_rebinds_the_attribute_reaches_the_base_methods() -> None:
    sub = """
    import torch

    from pkg.schedule import Schedule


    class ResetSchedule(Schedule):
        def reset(self, n):
            self.dma_kv_cache = torch.empty(2, n, 16)
    """
    # Schedule.page may run on a ResetSchedule, whose attribute is a tensor
    assert ("pkg/schedule.py", 12) in _flagged(_project(sub=sub))
