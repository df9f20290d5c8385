"""What an analysis produces: findings on source ranges, warnings about suppression comments,
and files it could not analyze."""

from __future__ import annotations

from dataclasses import dataclass, field

SAFE, UNSAFE = "safe", "unsafe"


@dataclass(frozen=True)
class FixInfo:
    """That a finding has an automatic fix, how safe it is (ruff's terms), and what it does."""

    applicability: str  # SAFE: same behaviour (--fix); UNSAFE: needs --unsafe-fixes
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"applicability": self.applicability, "message": self.message}


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int  # 1-based
    column: int  # 1-based, in characters (code points)
    end_line: int
    end_column: int
    code: str
    severity: str
    message: str  # one line, short: what is wrong where
    # why it is wrong and the way out (``--output-format full``, JSON, SARIF)
    explanation: str = field(default="", compare=False)
    fix: FixInfo | None = field(default=None, compare=False)
    fix_withheld: str = field(default="", compare=False)  # why --fix leaves it alone, if so
    # the text of ``line`` and of ``end_line`` (as the tokenizer counts lines), so that a
    # report shows the source that was analyzed and can count columns in other units
    source_line: str = field(default="", compare=False, repr=False)
    end_source_line: str = field(default="", compare=False, repr=False)
    # None: reported; a string: silenced by a ``# kvguard: ignore`` comment with this reason
    suppressed: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "explanation": self.explanation,
            "fix": self.fix.to_dict() if self.fix else None,
            "fix_withheld": self.fix_withheld or None,
        }
        if self.suppressed is not None:
            out["suppression"] = {"reason": self.suppressed}
        return out


@dataclass(frozen=True, order=True)
class Notice:
    """A warning that changes no exit code: a suppression comment that names an unknown
    code or silences nothing."""

    path: str
    line: int
    column: int
    message: str

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


@dataclass(frozen=True, order=True)
class FileError:
    path: str
    message: str
    line: int = 0  # 0: the error has no place in the file
    column: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line or None,
            "column": self.column or None,
            "message": self.message,
        }

    def located(self) -> str:
        """``path:line:col`` (as far as known), the prefix of its one-line report."""
        if not self.line:
            return self.path
        return (
            f"{self.path}:{self.line}:{self.column}" if self.column else f"{self.path}:{self.line}"
        )
