"""Foundations every other package uses: errors, logging, paths, atomic files and locks."""
