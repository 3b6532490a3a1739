"""Compare two `vsaccade predict` CSVs of the same files: classes equal, probabilities within --prob-tol, glimpse boxes
within --box-tol pixels. Prints the largest differences and exits 1 if any check fails.

Usage: python experiments/files/golden_check.py BEFORE.csv AFTER.csv [--json OUT.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys


def compare(before: str, after: str, prob_tol: float = 1e-5, box_tol: float = 0.5) -> dict:
    def rows(path):
        with open(path, newline="") as handle:
            return {row["path"]: row for row in csv.DictReader(handle)}

    old, new = rows(before), rows(after)
    if set(old) != set(new):
        raise SystemExit(f"the CSVs hold different files ({len(set(old) ^ set(new))} differ)")
    fields = list(next(iter(old.values())))
    probabilities = [f for f in fields if "_p_" in f]
    boxes = [f for f in fields if re.fullmatch(r"glimpse\d+_[xy][01]", f)]
    classes = [f for f in fields if f != "path" and f not in probabilities and f not in boxes]
    class_mismatches = sum(old[p][f] != new[p][f] for p in old for f in classes)
    prob_diff = max((abs(float(old[p][f]) - float(new[p][f])) for p in old for f in probabilities), default=0.0)
    box_diff = max((abs(float(old[p][f]) - float(new[p][f])) for p in old for f in boxes), default=0.0)
    return {"files": len(old), "class_fields": classes, "class_mismatches": class_mismatches,
            "max_probability_difference": prob_diff, "max_box_difference_px": box_diff,
            "probability_tolerance": prob_tol, "box_tolerance_px": box_tol,
            "passed": class_mismatches == 0 and prob_diff <= prob_tol and box_diff <= box_tol}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--prob-tol", type=float, default=1e-5)
    parser.add_argument("--box-tol", type=float, default=0.5)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = compare(args.before, args.after, args.prob_tol, args.box_tol)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
