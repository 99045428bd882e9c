"""video: factorised space-time U-Net with masked conditioning (see issue: video domain)."""

from multigen import import_on_access

__getattr__ = import_on_access(__name__)
