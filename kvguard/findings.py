"""What an analysis produces: findings on source ranges and files it could not analyze."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
    column: int  # 1-based, in characters
    end_line: int
    end_column: int
    code: str
    severity: str
    message: str
    fix: FixInfo | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, order=True)
class FileError:
    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}
