"""Error types that modules on both sides of an import share (no imports of the package here).

:class:`DatasetError` is raised by the image decoding of :mod:`transfer_lab.images` and by
the dataset readers of :mod:`transfer_lab.sources`, which import that module; it lives here so
that neither has to import the other for it. Source plugins keep importing it from
``transfer_lab.sources.base``, which re-exports it.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete or corrupt; the message says which file and what was expected."""
