"""Conservazione a norma (issue 9): nothing yet."""
