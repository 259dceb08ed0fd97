"""Choose the codec implementation: the compiled Cython core or its pure-Python twin.

Like psycopg's ``PSYCOPG_IMPL``: ``METERSYNC_IMPL=c`` or ``=python`` is strict (an unavailable
choice is an ImportError); unset means "best available", the C core when importable, else the
Python twin with a warning. The winner is recorded in ``IMPL``.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

ENV_VAR = "METERSYNC_IMPL"


def _select() -> tuple[ModuleType, str]:
    wanted = os.environ.get(ENV_VAR, "").strip().lower()
    if wanted not in ("", "c", "python"):
        raise ImportError(
            f"{ENV_VAR}={wanted!r} is not valid: use 'c' or 'python' (or leave unset)"
        )
    if wanted == "python":
        from metersync.codec import _python as _codec_py

        return _codec_py, "python"
    try:
        from metersync.codec import _batch
    except ImportError as exc:
        if wanted == "c":
            raise ImportError(
                f"{ENV_VAR}=c but the compiled core metersync.codec._batch is not importable "
                f"({exc}); reinstall metersync with a C compiler available"
            ) from exc
        warnings.warn(
            "metersync: compiled core metersync.codec._batch not available, using the pure-Python "
            f"twin (slower; set {ENV_VAR}=python to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )
        from metersync.codec import _python as _codec_py

        return _codec_py, "python"
    return _batch, "c"


impl_module, IMPL = _select()


def _select_page() -> ModuleType:
    """The download page parser (``_page`` or its twin ``_page_py``), by the same rule."""
    from metersync.codec import _page_py

    if IMPL == "python":
        return _page_py
    try:
        from metersync.codec import _page
    except ImportError as exc:
        if os.environ.get(ENV_VAR, "").strip().lower() == "c":
            raise ImportError(
                f"{ENV_VAR}=c but the compiled page parser metersync.codec._page is not "
                f"importable ({exc}); rebuild metersync with a C compiler available"
            ) from exc
        warnings.warn(
            "metersync: compiled page parser metersync.codec._page not available, using the "
            f"pure-Python twin (slower; set {ENV_VAR}=python to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )
        return _page_py
    return _page


#: The download page parser module of the active implementation (``parse_page``).
page_module = _select_page()
