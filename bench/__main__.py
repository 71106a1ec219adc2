"""`python -m bench`: the guard matters, because ingest's spawned workers re-import this module."""

from bench.run import main

if __name__ == "__main__":
    raise SystemExit(main())
