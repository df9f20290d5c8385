"""Score KVG001 against the hand-labelled vLLM sites in tests/data/vllm_labels.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kvguard.config import Config
from kvguard.engine import check

LABELS = Path(__file__).parent.parent / "data" / "vllm_labels.json"


@dataclass
class Score:
    version: str
    true_positives: list[str]
    false_positives: list[str]  # flagged, labelled not a split
    false_negatives: list[str]  # labelled a split, not flagged
    unlabelled: list[str]  # flagged, no label (reported, not scored)

    @property
    def precision(self) -> float:
        flagged = len(self.true_positives) + len(self.false_positives)
        return len(self.true_positives) / flagged if flagged else 1.0

    @property
    def recall(self) -> float:
        wanted = len(self.true_positives) + len(self.false_negatives)
        return len(self.true_positives) / wanted if wanted else 1.0


def labels(version: str, include_ambiguous: bool = True) -> dict[tuple[str, int], bool]:
    out = {}
    for item in json.loads(LABELS.read_text()):
        if item["version"] != version:
            continue
        if not include_ambiguous and item["reason"].startswith("AMBIGUOUS"):
            continue
        out[(item["path"], item["line"])] = bool(item["label"])
    return out


def score(tree: Path, version: str, include_ambiguous: bool = True) -> Score:
    """Run kvguard on ``tree`` (a directory holding ``vllm/``) and compare with the labels."""
    import os

    wanted = labels(version, include_ambiguous)
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        result = check(["vllm"], Config(select=("KVG001",)), use_cache=False)
    finally:
        os.chdir(cwd)
    flagged = {(f.path, f.line) for f in result.findings}
    tp = sorted(f"{p}:{n}" for p, n in flagged if wanted.get((p, n)) is True)
    fp = sorted(f"{p}:{n}" for p, n in flagged if wanted.get((p, n)) is False)
    unl = sorted(f"{p}:{n}" for p, n in flagged if (p, n) not in wanted)
    fn = sorted(f"{p}:{n}" for (p, n), v in wanted.items() if v and (p, n) not in flagged)
    return Score(version, tp, fp, fn, unl)


def report(title: str, s: Score) -> None:
    """One line of figures, then every site that was not a true positive."""
    print(
        f"{title}: precision {s.precision:.2f} recall {s.recall:.2f} "
        f"(true {len(s.true_positives) + len(s.false_negatives)}, tp {len(s.true_positives)}, "
        f"fp {len(s.false_positives)}, fn {len(s.false_negatives)}, "
        f"unlabelled {len(s.unlabelled)})"
    )
    for kind, label in (
        ("false_positives", "false positive"),
        ("false_negatives", "false negative"),
        ("unlabelled", "unlabelled"),
    ):
        for item in getattr(s, kind):
            print(f"  {label}: {item}")


if __name__ == "__main__":
    import sys

    root = Path(sys.argv[1])
    for version in sys.argv[2:]:
        report(version, score(root / version, version))
