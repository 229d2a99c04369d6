"""Print why a pytest worker crashed, from the run's log: CI shows only the log's tail, and a
crashed worker's stack dump (faulthandler) and XLA's fatal message lie far above it."""

import re
import sys

XLA_FATAL = re.compile(r"^[FE]\d{4} |Termination timeout|may be stuck|Check failed|terminate called|what\(\):")
XLA_PREFIX = re.compile(r"^[FEW]\d{4} [\d:.]+\s+\d+ ")


def excerpt(lines: list[str], frames: int = 3, limit: int = 40) -> list[str]:
    out = []
    for start in [i for i, line in enumerate(lines) if line.startswith("Fatal Python error")][-2:]:
        out.append(lines[start])
        i = start + 1
        while i < len(lines) and not lines[i].startswith(("Extension modules", "[gw")):
            if re.match(r"^(Current thread|Thread) 0x", lines[i]):
                stack = []
                i += 1
                while i < len(lines) and lines[i].startswith("  File "):
                    stack.append(lines[i])
                    i += 1
                if stack and not stack[0].rstrip().endswith((" in wait", " in _wait_for_tstate_lock", " in select")):
                    ours = [f for f in stack if "/acestep_jax/" in f or "/tests/" in f][:1]
                    out += [lines[i - len(stack) - 1]] + stack[:frames] + [f for f in ours if f not in stack[:frames]]
                continue
            i += 1
    seen, xla = set(), []
    for line in lines:  # XLA's messages once each (a failing call repeats them from many threads)
        key = XLA_PREFIX.sub("", line)
        if XLA_FATAL.search(line) and key not in seen:
            seen.add(key)
            xla.append(line)
    return (out + xla[-10:])[-limit:]


if __name__ == "__main__":
    with open(sys.argv[1], errors="replace") as f:
        print("\n".join(excerpt(f.read().splitlines())))
