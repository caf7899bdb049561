"""The README and docs/ pages link only to files and headings that exist."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading):
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
  with open(path) as f:
    return {_anchor(line.lstrip("#")) for line in f if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
  with open(page) as f:
    targets = LINK.findall(f.read())
  for target in targets:
    if target.startswith(("http://", "https://")):
      continue
    path, _, anchor = target.partition("#")
    path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    assert os.path.exists(path), f"{os.path.relpath(page, ROOT)}: {target} does not exist"
    if anchor and path.endswith(".md"):
      assert anchor in _anchors(path), f"{os.path.relpath(page, ROOT)}: no heading #{anchor}"


def test_readme_is_short():
  with open(os.path.join(ROOT, "README.md")) as f:
    assert sum(1 for _ in f) < 200
