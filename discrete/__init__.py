"""discrete: D3PM categorical diffusion (see issue: discrete domain)."""

from multigen import import_on_access

__getattr__ = import_on_access(__name__)
