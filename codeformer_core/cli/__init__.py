"""The `codeformer` command line."""
