"""Data sets: every reader, writer and generator (LLP, feature files, synthetic LLP, WebDataset shards)."""
