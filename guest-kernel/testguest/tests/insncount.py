#!/usr/bin/env python3
"""Count the guest instructions executed from an entry point to the end of a
QEMU trace taken with one instruction per TB and `-d exec,nochain` (one
"Trace" line per executed instruction; each iteration of a rep-prefixed
instruction is a line of its own).

    insncount.py TRACE START_PC [-v]

Prints the instruction count (a rep instruction counted once) and the
number of executions including rep iterations; -v lists the PCs."""
import re
import sys

_PAT = re.compile(r"Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/")


def count(path, start):
    """Returns [(pc, repeats)] from the first execution of start to the end."""
    runs = []
    started = False
    with open(path, errors="replace") as f:
        for line in f:
            m = _PAT.match(line)
            if not m:
                continue
            pc = int(m.group(1), 16)
            if not started:
                if pc != start:
                    continue
                started = True
            if runs and runs[-1][0] == pc:
                runs[-1][1] += 1
            else:
                runs.append([pc, 1])
    return runs


def main():
    runs = count(sys.argv[1], int(sys.argv[2], 0))
    if not runs:
        sys.exit("start pc not found in the trace")
    total = sum(n for _, n in runs)
    print(f"instructions: {len(runs)} (executions incl. rep iterations: {total})")
    if "-v" in sys.argv[3:]:
        for pc, n in runs:
            print(f"  {pc:#x}" + (f" x{n}" if n > 1 else ""))


if __name__ == "__main__":
    main()
