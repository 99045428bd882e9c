"""discrete: D3PM categorical diffusion (see issue: discrete domain)."""
