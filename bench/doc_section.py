"""The generated sections of docs/benchmarks.md: each bench script owns the
text between its BEGIN_MARK and END_MARK lines and rewrites only that
(appended at the end of the page the first time). The scripts' inline
Python imports this from the repository root:

    import sys; sys.path.insert(0, "bench"); from doc_section import write_section
    write_section(section)  # DOC, BEGIN_MARK, END_MARK from the environment
"""

import os


def write_section(section, doc=None, begin=None, end=None):
    """Replaces the text from `begin` through `end` in `doc` with `section`
    (which starts with `begin` and ends with `end`), or appends it."""
    doc = doc or os.environ["DOC"]
    begin = begin or os.environ["BEGIN_MARK"]
    end = end or os.environ["END_MARK"]
    text = open(doc).read()
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    open(doc, "w").write(text)
