"""Network parts shared by the domains: time embeddings, attention, residual blocks, activation checkpointing."""

from .attention import Attention, attention, rotary_tables, rotate, xformers_available
from .blocks import FeedForward, GatedFeedForward, ResBlock, group_norm, run_block
from .embeddings import TimestepEmbedding, sinusoidal_embedding

__all__ = [
    "Attention",
    "FeedForward",
    "GatedFeedForward",
    "ResBlock",
    "TimestepEmbedding",
    "attention",
    "group_norm",
    "rotary_tables",
    "rotate",
    "run_block",
    "sinusoidal_embedding",
    "xformers_available",
]
