"""s3prl hub entries for spear-fast students (s3prl's hubconf convention: `NAME_local(ckpt)`).

Register with an s3prl checkout in one line, then use it like any upstream:
    echo "from spear_fast.integrations.s3prl_hubconf import *" >> s3prl/hub.py
    python run_downstream.py -m train -u spear_fast_local -k exported/large -d voxceleb1 -n spear_sid
or drop it into s3prl's tree as upstream/spear_fast/hubconf.py (this file works there as it is) and
add `from s3prl.upstream.spear_fast.hubconf import *` to s3prl/hub.py.
"""
from __future__ import annotations

from spear_fast.integrations.s3prl_expert import UpstreamExpert as _UpstreamExpert

__all__ = ["spear_fast_local"]


def spear_fast_local(ckpt, *args, **kwargs):
    """A spear-fast student from a local `spear export` directory or training checkpoint.
        ckpt (str): PATH
    """
    return _UpstreamExpert(ckpt, *args, **kwargs)
