"""The benchmark: what users feel, measured against the real system over HTTP (see bench/README.md)."""
