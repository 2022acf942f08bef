"""Retrieval quality benchmark; same as `smolit bench retrieval --json`. Prints one JSON object.

Usage: python bench/retrieval.py [--limit N] [--ef 10 --ef 40 ...]
Uses SMOLIT_DATABASE_URL when set, otherwise a fresh embedded PostgreSQL in a temporary folder.
"""

from __future__ import annotations

import argparse
import json

from smolit.infra.settings import Settings
from smolit.retrieval_bench import DEFAULT_EF_SWEEP, run_retrieval_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="at most this many documents per corpus")
    parser.add_argument("--ef", type=int, action="append", help="ef_search values to sweep (repeatable)")
    args = parser.parse_args()
    ef = tuple(args.ef) if args.ef else DEFAULT_EF_SWEEP
    print(json.dumps(run_retrieval_bench(Settings(), args.limit, ef)))


if __name__ == "__main__":
    main()
