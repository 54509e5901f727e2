"""A fake Cloud Storage for tests (there is no network here): an fsspec filesystem registered for the "gs" and
"gcs" protocols (the ones etils.epath asks fsspec for) that keeps objects under a local directory. Like Cloud
Storage it has no append mode."""

import os

import fsspec
from fsspec.implementations.local import LocalFileSystem


class FakeGCS(LocalFileSystem):
    """gs://bucket/key -> ROOT/bucket/key; no appends (objects are written whole)."""

    protocol = ("gs", "gcs")
    root = ""

    def __init__(self, *args, **kwargs):
        kwargs.pop("finalize_on_close", None)
        super().__init__(auto_mkdir=True, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path) if not isinstance(path, str) else path
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                return os.path.join(cls.root, path[len(prefix):])
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError("Cloud Storage objects cannot be appended to")
        return super()._open(path, mode=mode, **kwargs)


def install_fake_gcs(root) -> str:
    """Serve gs://bucket/key from ROOT/bucket/key (created) for the rest of the process; returns ROOT."""
    FakeGCS.root = str(root)
    os.makedirs(FakeGCS.root, exist_ok=True)
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    return root
