"""video: factorised space-time U-Net with masked conditioning (see issue: video domain)."""
