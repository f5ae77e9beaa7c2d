"""The watchdog's warnings in a widget: a red, word-wrapped line under the controls, hidden when
there are none; each new warning also raises a napari notification."""

from __future__ import annotations

from magicgui.widgets import Label


class WarningsLabel(Label):
    """``show(warnings)`` replaces the warnings shown (``.shown``), one line ``warning: ...``
    each."""

    def __init__(self):
        super().__init__(value="")
        self.native.setWordWrap(True)
        self.native.setStyleSheet("color: #e04040")
        self.visible = False
        self.shown: list[str] = []

    def show(self, warnings, notify: bool = True, source: str = "") -> list[str]:
        """Show ``warnings``; with ``notify``, a notification (``source: warning``) for each one not
        shown before. Returns the warnings shown."""
        warnings = [str(w) for w in warnings]
        new = [w for w in warnings if w not in self.shown]
        self.shown = warnings
        self.value = "\n".join(f"warning: {w}" for w in warnings)
        self.visible = bool(warnings)
        if notify and new:
            from napari.utils.notifications import show_warning

            for warning in new:
                show_warning(f"{source}: {warning}" if source else warning)
        return warnings
