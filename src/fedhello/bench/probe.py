"""The fresh process of a measurement that needs one (peak memory): ``python -m fedhello.bench.probe JSON``.

Prints one JSON line. Started by :func:`fedhello.bench.suite.freeze_memory` and
:func:`fedhello.bench.suite.bench_scale`; not meant to be run by hand.
"""

from __future__ import annotations

import json
import sys

from fedhello.bench.suite import probe_freeze, probe_scale


def main() -> None:
    """Run the probe named by the JSON argument's ``kind`` and print its result as JSON."""
    arg = json.loads(sys.argv[1])
    fn = {"freeze": probe_freeze, "scale": probe_scale}[arg["kind"]]
    print(json.dumps(fn(arg)))


if __name__ == "__main__":
    main()
