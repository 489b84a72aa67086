"""The citizen's FSE portal (issue 7): nothing yet."""
