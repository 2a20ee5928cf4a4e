"""`make demo`: the order saga on the local stack.

Not built yet: the saga issue wires it. Until then this says so plainly and fails, so no
one mistakes an empty run for a working demo.
"""

from __future__ import annotations

import sys


def main() -> int:
    print("make demo: the order saga is not built yet (see docs/status.md).\n"
          "What works today: `make stack-up`, `make test`.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
