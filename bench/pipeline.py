"""End-to-end pipeline benchmark; same as `smolit bench pipeline --json`. Prints one JSON object.

Usage: python bench/pipeline.py [--requests 500] [--concurrency 32] [--rate 50] [--storage memory|s3]
"""

from __future__ import annotations

import argparse
import json

from smolit.bench import run_pipeline_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--storage", choices=["memory", "s3"], default="memory")
    args = parser.parse_args()
    print(json.dumps(run_pipeline_bench(args.requests, args.concurrency, args.rate, args.storage)))


if __name__ == "__main__":
    main()
