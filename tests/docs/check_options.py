#!/usr/bin/env python3
"""
The programs' options and the docs agree: every --option a program's --help
lists is named somewhere in README.md or docs/*.md (emberfs(8) is made from
that --help, so the man page and the prose cannot drift apart unseen).

    check_options.py EMBERFS_BIN EMBERFS_E2B_BIN
"""
import glob
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPT = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def help_options(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    return set(OPT.findall(out))


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    docs = {}
    for f in [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
        docs[os.path.relpath(f, REPO)] = open(f).read()
    text = "\n".join(docs.values())
    problems = []
    for binary in sys.argv[1:]:
        name = os.path.basename(binary)
        for o in sorted(help_options(binary)):
            if not re.search(r"(?<![\w-])" + re.escape(o) + r"(?![\w-])", text):
                problems.append(f"{name} {o}: in --help, in no doc (README.md, docs/*.md)")
    for p in problems:
        print("check_options:", p, file=sys.stderr)
    print(f"check_options: {'FAIL' if problems else 'PASS'} ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
