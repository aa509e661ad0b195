"""OmegaConf resolvers used by the shipped configs (``conf/``)."""

from __future__ import annotations

import os


def register_resolvers() -> None:
    """``${cwd:}`` in conf/paths: the directory a job was started from, resolvable before Hydra's own
    runtime config exists (the multirun sweeper resolves its sweep dir that early)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)
