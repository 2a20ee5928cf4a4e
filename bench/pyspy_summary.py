"""Summarise a py-spy profile in raw (collapsed) format: per thread, the top functions.

    .venv/bin/python bench/relay.py --py-spy /tmp/relay.prof --sizes 200 --skip-latency
    .venv/bin/python bench/pyspy_summary.py /tmp/relay.prof.200 [--top 25] [--rate 200]

Each line of the file is one stack (``thread (0x..);outer (file:line);...;inner (file:line)
COUNT``, ``--threads`` puts the thread first). Printed per thread: its samples, the share
of the run it was busy (samples / (duration x rate), when ``--seconds`` is given), and the
functions with the largest inclusive ("total": on the stack) and exclusive ("self": the
innermost frame) shares of that thread's samples.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict

FRAME = re.compile(r"^(?P<name>.*?) \((?P<where>[^()]*)\)$")


def function(frame: str) -> str:
    """``name (path/to/module.py:123)`` -> ``name (module.py)``: lines merged per function."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    where = match.group("where").rsplit(":", 1)[0]
    return f"{match.group('name')} ({where.rsplit('/', 1)[-1]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="py-spy's --rate")
    parser.add_argument("--lines", metavar="FUNCTION",
                        help="also: the own samples of FUNCTION (as printed, e.g. "
                             "'Sender.send (produce.py)') by source line")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="duration of the recording (for busy shares)")
    args = parser.parse_args()
    samples: Counter[str] = Counter()
    total: dict[str, Counter[str]] = defaultdict(Counter)
    own: dict[str, Counter[str]] = defaultdict(Counter)
    names: dict[str, str] = {}
    lines: Counter[str] = Counter()
    with open(args.profile) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            # "thread (tid)" before the thread is named, "thread (tid): name" after
            tid, _, name = frames[0].partition(": ")
            names[tid] = names.get(tid) or name
            thread, calls = tid, [function(x) for x in frames[1:]]
            n = int(count)
            if frames[1:] and args.lines and function(frames[-1]) == args.lines:
                lines[frames[-1].rsplit(":", 1)[-1].rstrip(")")] += n
            samples[thread] += n
            for name in set(calls):
                total[thread][name] += n
            if calls:
                own[thread][calls[-1]] += n
    everything = sum(samples.values())
    for thread, n in samples.most_common():
        busy = (f", busy {n / (args.seconds * args.rate):.0%} of the run"
                if args.seconds else "")
        print(f"\n{thread} {names.get(thread) or ''}: {n} samples ({n / everything:.0%} "
              f"of all){busy}")
        print(f"  {'total':>6} {'self':>6}  function")
        for name, t in total[thread].most_common(args.top):
            print(f"  {t / n:6.1%} {own[thread][name] / n:6.1%}  {name}")
    if args.lines:
        print(f"\n{args.lines}: its own samples by line")
        for line, n in lines.most_common(args.top):
            print(f"  line {line:>5} {n:6d} samples ({n / everything:.1%} of all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
