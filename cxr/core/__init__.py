"""Plumbing every part shares: errors, files, state folder, locks, caching, task policy, progress."""
