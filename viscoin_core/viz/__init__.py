"""Figures and widgets of the study.

The figures are built as `matplotlib.figure.Figure` objects without pyplot (no global state, no
backend choice). IPython registers its PNG formatter for Figure only when pyplot's inline backend
is set up, so in a kernel that never imported pyplot `display(fig)` showed `<Figure size ...>` as
text, in JupyterLab and in the executed notebooks papermill writes. Importing this package inside
an IPython kernel registers that formatter (unless one for Figure is already there).
"""

from __future__ import annotations

# The image formats IPython can show a Figure in; a user's own choice (%config InlineBackend,
# %matplotlib inline) registers one of them and is left alone.
_FIGURE_MIMES = ("image/png", "image/svg+xml", "image/jpeg", "application/pdf")


def _png(fig) -> bytes:
    """fig as PNG bytes, cropped as the inline backend crops it."""
    from IPython.core.pylabtools import print_figure
    return print_figure(fig, "png", bbox_inches="tight")


def show_figures_as_images(shell=None) -> bool:
    """Make `shell` (default: the running IPython, if any) display Figures as PNG; True if it now does.

    Nothing happens outside IPython, or when a formatter for Figure is already registered.
    """
    try:
        from IPython import get_ipython
    except ImportError:          # plain Python without IPython: nothing displays figures
        return False
    shell = shell or get_ipython()
    formatters = getattr(getattr(shell, "display_formatter", None), "formatters", None)
    if not formatters or "image/png" not in formatters:
        return False
    from matplotlib.figure import Figure
    for mime in _FIGURE_MIMES:
        if mime in formatters:
            try:
                formatters[mime].lookup_by_type(Figure)
                return True      # already shown as an image
            except KeyError:
                pass
    formatters["image/png"].for_type(Figure, _png)
    return True


show_figures_as_images()
