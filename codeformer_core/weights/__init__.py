"""Known weight files: registry, locations and the verified downloader."""
