"""Shared helpers: the one run config, user-facing errors, atomic publishing, command-line plumbing."""
