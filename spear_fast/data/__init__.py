"""Corpus bookkeeping: JSON-lines manifests and the sharded, memory-mapped token stores."""
from .manifest import (
    AUDIO_EXTENSIONS,
    DOMAINS,
    ManifestEntry,
    ManifestError,
    manifest_from_dir,
    manifest_from_lhotse,
    read_manifest,
    write_manifest,
)
from .token_store import (
    TokenStore,
    TokenStoreError,
    TokenStoreMeta,
    TokenStoreWriter,
    finalize_token_store,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "DOMAINS",
    "ManifestEntry",
    "ManifestError",
    "TokenStore",
    "TokenStoreError",
    "TokenStoreMeta",
    "TokenStoreWriter",
    "finalize_token_store",
    "manifest_from_dir",
    "manifest_from_lhotse",
    "read_manifest",
    "write_manifest",
]
