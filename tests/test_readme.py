"""The README's measured numbers come from committed CSVs, and every relative link in the docs resolves.

The headline table of README.md follows an HTML comment that names the CSVs it was taken from,

    <!-- headline: results/cpu/taylor/harness-paired/batch2/derivatives.csv
                   results/cpu/taylor/harness-paired/batch64/derivatives.csv -->  (on one line)

and each of its cells is recomputed here from those CSVs' rows, with the rounding the table prints: a time ratio
"A / B" is A's paired ``time_ratio`` where A's row was timed against B (``versus``), else time_ms(A) / time_ms(B),
to 3 significant figures and an "x"; an error "M rel. error" is rel_error(M) to
2 significant figures, in e-notation or as a percentage (whichever the cell uses). A row's batch picks the CSV whose
rows have that batch. The training-step paragraph after ``<!-- headline-steps: CSV -->`` may only quote speed-ups
(``N.NNx``) that are in that CSV. A changed number, in the README or in the CSV, fails the test.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md"), *(ROOT / "results").glob("*/README.md")])
MAX_README_BYTES = 11_500  # a newcomer's page: what it is, the commands, the headline, links


# ---- parsing -------------------------------------------------------------------------------------------------

def marked(marker: str, text: str) -> tuple[list[Path], str]:
    """The CSVs named by ``<!-- marker: PATH ... -->`` in ``text``, and the text after the comment."""
    match = re.search(rf"<!--\s*{marker}:\s*(.+?)\s*-->\n", text)
    assert match, f"README.md has no <!-- {marker}: ... --> comment"
    return [ROOT / p for p in match.group(1).split()], text[match.end():]


def markdown_table(text: str) -> pd.DataFrame:
    """The markdown table at the start of ``text``, as strings (header row, separator row, body rows)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("|"):
            break
        lines.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert len(lines) >= 3 and set("".join(lines[1])) <= set("-: "), "no markdown table right after the comment"
    return pd.DataFrame(lines[2:], columns=lines[0])


def headline() -> tuple[list[Path], pd.DataFrame]:
    sources, rest = marked("headline", README.read_text())
    return sources, markdown_table(rest)


# ---- recomputing a cell --------------------------------------------------------------------------------------

def ratio(value: float) -> str:
    return f"{value:.3g}x"


def error(value: float, like: str) -> str:
    """rel_error to 2 significant figures, as a percentage when the printed cell is one."""
    return f"{100 * value:.2g}%" if like.endswith("%") else f"{value:.1e}"


def one_row(frame: pd.DataFrame, method: str, order: int) -> pd.Series:
    rows = frame[(frame.method == method) & (frame.order == order) & (frame.status == "ok")]
    assert len(rows) == 1, f"expected one ok row of {method} at T = {order}, found {len(rows)}"
    return rows.iloc[0]


def expected_cell(column: str, frame: pd.DataFrame, order: int, printed: str) -> str:
    if match := re.fullmatch(r"(\S+) / (\S+)", column):
        over, under = (one_row(frame, m, order) for m in match.groups())
        if over.get("versus") == under.method and pd.notna(over.get("time_ratio")):  # timed in pairs
            return ratio(over.time_ratio)
        return ratio(over.time_ms / under.time_ms)
    if match := re.fullmatch(r"(\S+) rel\. error", column):
        return error(one_row(frame, match.group(1), order).rel_error, printed)
    raise AssertionError(f"headline column {column!r}: expected 'A / B' (time ratio) or 'M rel. error'")


def by_batch(sources: list[Path]) -> dict[int, pd.DataFrame]:
    frames = {}
    for path in sources:
        frame = pd.read_csv(path)
        (batch,) = frame.batch.unique()  # one CSV per batch, so a row's batch names its source
        frames[int(batch)] = frame
    return frames


# ---- the tests -----------------------------------------------------------------------------------------------

def test_headline_table_is_recomputed_from_its_csvs():
    sources, table = headline()
    assert {"batch", "T"} <= set(table.columns) and len(table) >= 1
    frames = by_batch(sources)
    measured = [c for c in table.columns if c not in ("batch", "T")]
    assert measured, "the headline table has no measured column"
    for _, row in table.iterrows():
        frame, order = frames[int(row["batch"])], int(row["T"])
        for column in measured:
            assert row[column] == expected_cell(column, frame, order, row[column]), (
                f"README headline, batch {row['batch']}, T = {order}, {column!r}: printed {row[column]!r}, "
                f"the CSV gives {expected_cell(column, frame, order, row[column])!r}")
    assert set(table.batch.astype(int)) == set(frames), "a CSV named in the headline comment is not in the table"


def test_headline_steps_quote_only_speedups_of_their_csv():
    (source,), rest = marked("headline-steps", README.read_text())
    paragraph = rest.split("\n\n", 1)[0]
    quoted = re.findall(r"(\d+\.\d+)x", paragraph)
    assert quoted, "the training-step paragraph quotes no speed-up"
    frame = pd.read_csv(source)
    columns = [c for c in ("speedup", "speedup_taylor") if c in frame]
    available = {ratio(v)[:-1] for c in columns for v in frame[c].dropna()}
    assert set(quoted) <= available, f"speed-ups not in {source.name}: {sorted(set(quoted) - available)}"


def test_headline_sources_are_committed():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    sources = [*headline()[0], *marked("headline-steps", README.read_text())[0]]
    for path in sources:
        listed = subprocess.run(["git", "ls-files", "--error-unmatch", str(path.relative_to(ROOT))], cwd=ROOT,
                                capture_output=True, text=True)
        assert listed.returncode == 0, f"{path.relative_to(ROOT)} is not committed"


def test_readme_stays_short():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail to docs/ or a results README"


# ---- links ---------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are code, not links."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file: lowercase, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", without_fences(path.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_docs_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/csv-columns.md", "docs/library.md", "docs/extending.md",
            "docs/user-models.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    broken = []
    for target in relative_links(path):
        file, _, fragment = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_readme_links_the_docs():
    links = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    for name in ("csv-columns", "library", "extending", "user-models"):
        assert (ROOT / "docs" / f"{name}.md").resolve() in links, f"README.md does not link docs/{name}.md"
