"""``python -m benchmarks`` is ``python -m benchmarks.storm`` (same flags)."""

from __future__ import annotations

from benchmarks.storm import main

if __name__ == "__main__":
    raise SystemExit(main())
