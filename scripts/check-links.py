#!/usr/bin/env python3
"""Every relative link in every Markdown file of the repository resolves: to a file or
folder that exists, and, for `#anchor` links into a Markdown file, to one of its headings.
No network. Run by scripts/test.sh; exits 1 listing what leads nowhere."""
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def anchors(path):
    """GitHub's heading anchors of a Markdown file."""
    out = set()
    in_code = False
    for line in open(path, encoding="utf-8", errors="replace"):
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        text = re.sub(r"[^\w\- ]", "", text)
        out.add(text.replace(" ", "-"))
    return out


bad = []
for dirpath, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in (".git", "target", "node_modules")]
    for name in files:
        if not name.endswith(".md"):
            continue
        path = os.path.join(dirpath, name)
        text = open(path, encoding="utf-8", errors="replace").read()
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for m in re.finditer(r"\]\(([^)\s]*)\)", text):
            target = m.group(1)
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(dirpath, file_part)) if file_part else path
            rel = os.path.relpath(path, root)
            if not os.path.exists(dest):
                bad.append(f"{rel}: {target} (no such file)")
            elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                bad.append(f"{rel}: {target} (no such heading)")
if bad:
    print("links that lead nowhere:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print("every relative Markdown link resolves")
