"""Size limits of the backend API, in one place so they are documented together.

Every limit is in bytes of UTF-8 JSON (or of decoded data where it says so).
Going over one is a 413 with a reason naming the limit. User-data may be at
least 64 KiB (EC2 allows 16 KiB, OpenStack 64 KiB; we allow more).
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

MAX_REQUEST_BYTES = 2 * MIB
"""Whole request body."""
MAX_KEY_CHARS = 255
"""A metadata key, a tag name, a guest-data key."""
MAX_VALUE_BYTES = 64 * KIB
"""One metadata value (as JSON)."""
MAX_OBJECT_METADATA_BYTES = 256 * KIB
"""All classes of one object's metadata together (as JSON)."""
MAX_USER_DATA_BYTES = 256 * KIB
"""All user-data parts of a server together (decoded)."""
MAX_FILES_BYTES = 256 * KIB
"""All injected files of a server together (decoded)."""
MAX_DOCUMENT_BYTES = 1536 * KIB
"""One server's own record (specification with user-data and files, and its
metadata). With its customer's, image's and runtime's metadata (each at most
MAX_OBJECT_METADATA_BYTES) a whole instance document stays under ~2.3 MiB."""
MAX_PASSWORD_BYTES = 1020
"""The guest-set password (OpenStack's limit)."""
MAX_GUEST_VALUE_BYTES = 16 * KIB
"""One value in the guest-writable namespace."""
MAX_GUEST_DATA_BYTES = 64 * KIB
"""The whole guest-writable namespace of one server."""
MAX_PAGE = 1000
"""Largest ``limit`` of a list request."""
DEFAULT_PAGE = 100
MAX_WATCH_TIMEOUT = 60


@dataclass(frozen=True)
class Limits:
    """The limits one backend process enforces (defaults above; config may lower/raise)."""

    request_bytes: int = MAX_REQUEST_BYTES
    value_bytes: int = MAX_VALUE_BYTES
    object_metadata_bytes: int = MAX_OBJECT_METADATA_BYTES
    user_data_bytes: int = MAX_USER_DATA_BYTES
    files_bytes: int = MAX_FILES_BYTES
    document_bytes: int = MAX_DOCUMENT_BYTES
