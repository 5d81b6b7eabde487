"""The renderer tests' documents (tests/data/doc_*.json) for the channel tests too."""

import tests.helpers.hypothesis_home  # noqa: F401 - caches out of the work tree
from tests.unit.formats.conftest import any_doc, load_doc

__all__ = ["any_doc", "load_doc"]
