"""Classification quality over the bounce corpus (tests/fixtures/email).

The expected kind, reason and recipients of each message are the ones written in
tests/test_bounce_fixtures.py (decided by reading the message). Prints one row per system
(the fixture name's first word) and expected reason: how many messages, in how many the
expected recipients were all found, in how many the kind was right, and in how many the
hard-versus-not-hard decision was right (the one that burns an address or not); then the
totals and the number of crashes (a message the parser raised on; must be zero).

    python bench/bench_bounces.py                  # the labelled corpus
    python bench/bench_bounces.py --also DIR ...   # plus unlabelled folders: crashes and kinds only

Targets (issue 10): recipient found >= 95 %, hard vs not hard >= 95 %, zero crashes.
Note the rules were written with this corpus in view; it is not a held-out set.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.bounces import classify_message  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "email"
TESTS = ROOT / "tests" / "test_bounce_fixtures.py"


def expectations() -> list[dict]:
    """Every `expect("file", kind=…, reason=…, recipients=[…])` call in the fixture tests."""
    found = []
    for node in ast.walk(ast.parse(TESTS.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "expect":
            item = {"file": ast.literal_eval(node.args[0])}
            item.update({keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords})
            found.append(item)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--also", nargs="*", default=[], help="folders of unlabelled messages")
    args = parser.parse_args()

    rows: dict[tuple[str, str], Counter] = defaultdict(Counter)
    crashes: list[str] = []
    started = time.perf_counter()
    cases = expectations()
    for case in cases:
        system = case["file"].split("_")[0]
        key = (system, case["reason"])
        try:
            verdict = classify_message((FIXTURES / case["file"]).read_bytes())
        except Exception as exc:  # noqa: BLE001 - a crash is what this counts
            crashes.append(f"{case['file']}: {type(exc).__name__}: {exc}")
            rows[key]["n"] += 1
            continue
        rows[key]["n"] += 1
        rows[key]["recipient"] += set(case["recipients"]) <= set(verdict.recipients)
        rows[key]["kind"] += verdict.kind == case["kind"]
        rows[key]["reason"] += verdict.reason == case["reason"]
        rows[key]["hard"] += (verdict.kind == "hard") == (case["kind"] == "hard")
    elapsed = time.perf_counter() - started

    def pct(part: int, whole: int) -> str:
        return f"{100 * part / whole:5.1f} %" if whole else "    -  "

    print(f"{'system':<12} {'expected reason':<17} {'n':>3}  {'recipient':>9}  {'kind':>7}  {'reason':>7}  {'hard/not':>8}")
    total: Counter = Counter()
    for (system, reason), counts in sorted(rows.items()):
        total.update(counts)
        n = counts["n"]
        print(
            f"{system:<12} {reason:<17} {n:>3}  {pct(counts['recipient'], n):>9}  {pct(counts['kind'], n):>7}  "
            f"{pct(counts['reason'], n):>7}  {pct(counts['hard'], n):>8}"
        )
    n = total["n"]
    print("-" * 72)
    print(
        f"{'all':<12} {'':<17} {n:>3}  {pct(total['recipient'], n):>9}  {pct(total['kind'], n):>7}  "
        f"{pct(total['reason'], n):>7}  {pct(total['hard'], n):>8}"
    )
    print(f"crashes: {len(crashes)}   ({n} messages in {elapsed * 1000:.0f} ms)")
    for crash in crashes:
        print("  ", crash)

    for folder in args.also:
        kinds: Counter = Counter()
        failed = 0
        files = sorted(path for path in Path(folder).iterdir() if path.is_file())
        for path in files:
            try:
                kinds[classify_message(path.read_bytes()).kind] += 1
            except Exception:  # noqa: BLE001
                failed += 1
        print(f"{folder}: {len(files)} messages, crashes: {failed}, kinds: {dict(sorted(kinds.items()))}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
