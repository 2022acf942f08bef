"""Stream worker benchmark; same as `smolit bench streams --json`. Prints one JSON object.

Usage: python bench/streams.py [--events 50000] [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json

from smolit.bench import run_streams_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(run_streams_bench(args.events, args.rate, args.seconds, progress=False)))


if __name__ == "__main__":
    main()
