"""Dock layouts that fit a laptop screen (1280×800): tabs and collapsible sections whose contents
scroll, above a footer (warnings, status line, progress bar and Cancel) that always stays
visible."""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QScrollArea, QTabWidget, QVBoxLayout, QWidget


def native(widget) -> QWidget:
    """The Qt widget of a magicgui widget (or the Qt widget itself)."""
    return getattr(widget, "native", widget)


def column(*widgets, stretch: bool = True) -> QWidget:
    """Widgets one above the other, without margins (and a stretch below them)."""
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(native(widget))
    if stretch:
        layout.addStretch(1)
    return box


def scrolled(widget, max_height: int | None = None) -> QScrollArea:
    """``widget`` in a frameless vertical scroll area (at most ``max_height`` px tall if given)."""
    area = QScrollArea()
    area.setWidget(native(widget))
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    if max_height is not None:
        area.setMaximumHeight(max_height)
    return area


def tabs(pages: dict, max_height: int | None = None) -> QTabWidget:
    """A tab per ``title: [widgets]``, each page scrolling when taller than the tab."""
    widget = QTabWidget()
    for title, widgets in pages.items():
        widget.addTab(scrolled(column(*widgets), max_height), title)
    widget.setDocumentMode(True)
    return widget


def collapsible(title: str, *widgets, expanded: bool = False):
    """A collapsible section (superqt's ``QCollapsible``) holding ``widgets``."""
    from superqt import QCollapsible

    section = QCollapsible(title)
    section.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        section.addWidget(native(widget))
    if expanded:
        section.expand(animate=False)
    else:
        section.collapse(animate=False)
    return section


def compact(*combo_boxes, characters: int = 10) -> None:
    """Combo boxes that do not widen the dock to their longest item (it is elided instead)."""
    from qtpy.QtWidgets import QComboBox

    for combo in combo_boxes:
        box = native(combo)
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(characters)


PLUGIN_TITLE = "(napari-dynamight)"  # napari names a plugin's dock "Widget name (plugin name)"


def _dock_of(widget):
    from qtpy.QtWidgets import QDockWidget

    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def join_plugin_docks(widget) -> bool:
    """Put ``widget``'s dock in tabs with this plugin's other docks on the same side of the window,
    so that docking several of them never makes the window taller than the screen; True if it
    did."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = _dock_of(widget)
    window = None if dock is None else dock.parent()
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return False
    area = window.dockWidgetArea(dock)
    for other in window.findChildren(QDockWidget):
        if (
            other is not dock
            and other.isVisible()
            and not other.isFloating()
            and PLUGIN_TITLE in other.windowTitle()
            and window.dockWidgetArea(other) == area
            and dock not in window.tabifiedDockWidgets(other)
        ):
            window.tabifyDockWidget(other, dock)
            dock.show()
            dock.raise_()
            return True
    return False


def join_plugin_docks_when_shown(widget) -> None:
    """Call :func:`join_plugin_docks` the first time ``widget`` is shown in a dock."""
    if not getattr(widget, "_joined_docks", False):
        widget._joined_docks = True
        join_plugin_docks(widget)
