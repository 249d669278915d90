"""References in the code resolve inside the repository: every `docs/<page>.md#anchor` names a page that exists and a
heading of that page, so a renamed heading or a moved page cannot leave a comment pointing nowhere."""
import re

from conftest import REPO

SOURCES = ["minvar/**/*.py", "*.py", "tutorials/*.py", "tests/*.py", "bench/*.py", "*.md", "tutorials/*.md",
           "bench/*.md", "docs/*.md"]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_docs_reference_names_an_existing_page_and_heading():
    """Each page of docs/ that is mentioned exists, and each anchor after it matches one of that page's headings."""
    references = []
    for pattern in SOURCES:
        for path in sorted(REPO.glob(pattern)):
            references += [(path.name, page, anchor) for page, anchor in
                           re.findall(r"docs/([\w-]+\.md)(?:#([\w-]+))?", path.read_text(encoding="utf-8"))]
    assert references, "no reference to docs/ found: the search above is broken"
    for source, page, anchor in references:
        target = REPO / "docs" / page
        assert target.is_file(), f"{source} points at docs/{page}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            assert anchor in {github_anchor(h) for h in headings}, \
                f"{source} points at docs/{page}#{anchor}, but {page} has no such heading"
