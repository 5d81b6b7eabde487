"""The end-to-end fixtures (``topology``) for the conformance tests too."""

from tests.e2e.conftest import topology

__all__ = ["topology"]
