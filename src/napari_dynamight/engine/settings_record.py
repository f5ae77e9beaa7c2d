"""What the stages' settings dataclasses share: plain-dict round trips and the check on resume."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import TypeVar

from .errors import InputError

T = TypeVar("T", bound="SettingsRecord")


class SettingsRecord:
    """Mixin for frozen settings dataclasses stored in checkpoints as plain dictionaries.

    ``OPTION_NAMES`` maps a field to its command-line option where the two are spelled differently, so
    that messages name the option the user typed."""

    OPTION_NAMES: dict[str, str] = {}

    @classmethod
    def option(cls, name: str) -> str:
        """The command-line option of field ``name`` (``--`` and dashes)."""
        return "--" + cls.OPTION_NAMES.get(name, name.replace("_", "-"))

    def to_dict(self) -> dict:
        return asdict(self)

    def require_at_least(self, names: tuple[str, ...], minimum: int) -> None:
        """One-line InputError naming the first option of ``names`` whose value is below ``minimum``."""
        for name in names:
            value = getattr(self, name)
            if value < minimum:
                wording = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
                raise InputError(f"{self.option(name)} {wording}, got {value}")

    @classmethod
    def from_dict(cls: type[T], values: dict) -> T:
        """Settings from a dictionary; keys this version does not know (newer runs) are ignored and
        missing keys (older runs) take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def refuse_changed_settings(checkpoint: Path, saved: SettingsRecord, requested: SettingsRecord,
                            changeable: tuple[str, ...] = ("epochs",)) -> None:
    """One-line InputError if a resumed run asks for other settings than its checkpoint was made with
    (except the ``changeable`` ones)."""
    old, new = saved.to_dict(), requested.to_dict()
    changed = [k for k, v in old.items() if k not in changeable and new[k] != v]
    if changed:
        name = changed[0]
        raise InputError(f"{checkpoint}: was made with {name}={old[name]!r}, not {new[name]!r}; "
                         "resume with the run's original options")
