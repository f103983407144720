"""Shared infrastructure below every model: the checkpoint format, the cache and verified
downloads, strict state-dict loading, and the losses several trainers share."""
