"""Command-line tools: each a thin layer over a library function."""
