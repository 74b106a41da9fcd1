"""The documentation against the repository: links resolve, every alert has its runbook, the
configuration table is complete and true, and the names the docs use exist in the code.
Each check returns its problems as a list (empty = fine), so the tests can also feed it
deliberately broken input and see it caught."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices

from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOKS = ROOT / "docs" / "runbooks"
RULES = ROOT / "grafana" / "prometheus" / "rules" / "surgeserve.yml"
README_MAX_BYTES = 12 * 1024  # the landing page stays a landing page
RUNBOOK_BASE = "https://github.com/surgeserve/surgeserve/blob/main/"
CONFIG_HEADER = "| variable | default | meaning |"


def doc_files() -> list[Path]:
    """Every Markdown page a reader of the repository is sent to."""
    return [README, ROOT / "CHANGELOG.md", ROOT / "client" / "README.md",
            *sorted((ROOT / "docs").rglob("*.md"))]


# -- Markdown reading -------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target "title"); the text may wrap across lines
LINK = re.compile(r"(?<!!)\[[^\[\]]{0,300}\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks (their lines kept empty, so line numbers hold)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def links(text: str) -> list[str]:
    """The targets of the Markdown links in prose (not in code blocks or code spans)."""
    return LINK.findall(CODE_SPAN.sub("", prose(text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a page's headings give (repeats numbered as GitHub does)."""
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(prose(text)):
        base = slug(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def link_problems(page: Path, text: str, *, external_allowed: bool = True) -> list[str]:
    """Links of `page` that do not resolve to a file (or heading) in the repository."""
    problems = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            if not external_allowed:
                problems.append(f"{page.name}: links outside the repository: {target}")
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{page.name}: {target} leaves the repository")
        elif not resolved.exists():
            problems.append(f"{page.name}: {target} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            problems.append(f"{page.name}: {target}: no heading with that anchor")
    return problems


# -- links ------------------------------------------------------------------------------------

def test_every_relative_link_resolves_in_the_repository() -> None:
    problems = []
    for page in doc_files():
        problems += link_problems(page, page.read_text(), external_allowed=page != README)
    assert problems == []


def test_broken_links_are_caught() -> None:
    page = ROOT / "docs" / "api.md"
    assert link_problems(page, "[a](nowhere.md) [b](../../x.md) [c](operations.md#no-such)",
                         ) == ["api.md: nowhere.md does not exist",
                               "api.md: ../../x.md leaves the repository",
                               "api.md: operations.md#no-such: no heading with that anchor"]
    assert link_problems(README, "[d](https://example.org)", external_allowed=False) == [
        "README.md: links outside the repository: https://example.org"]
    # links inside code are not links; a link's text may wrap
    assert link_problems(page, "```\n[a](nowhere.md)\n```\n`[b](nowhere.md)`") == []
    assert link_problems(page, "[the\n  text](nowhere.md)") == ["api.md: nowhere.md does not exist"]


def test_anchors_follow_github_slugs() -> None:
    text = "# Engines: chosen by measurement\n## Online: the 2026-11-22 `make bench`\n## A\n## A\n"
    assert anchors(text) == {"engines-chosen-by-measurement",
                             "online-the-2026-11-22-make-bench", "a", "a-1"}


def test_readme_is_a_landing_page() -> None:
    text = README.read_text()
    assert len(text.encode()) <= README_MAX_BYTES, "README.md: put the detail in docs/"
    for needed in ("make up", "make test", "/v1/predict", "ssc submit", "ce-type:",
                   "AMD EPYC", "docs/architecture.md", "docs/api.md", "docs/operations.md",
                   "docs/clients.md", "docs/benchmarks.md", "docs/runbooks/"):
        assert needed in text, needed


def test_no_page_points_outside_the_repository_by_name() -> None:
    for page in doc_files():
        assert "shared/DESIGN.md" not in page.read_text(), page


# -- runbooks ---------------------------------------------------------------------------------

def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
            if "alert" in r]


def runbook_problems(rules: list[dict[str, Any]], pages: set[str], listed: str) -> list[str]:
    """Alerts without a runbook page (or whose runbook_url points elsewhere), pages without
    an alert, and alerts the operations page does not list with a link to their runbook."""
    problems = []
    names = {rule["alert"] for rule in rules}
    for rule in rules:
        name = rule["alert"]
        if name not in pages:
            problems.append(f"{name}: no docs/runbooks/{name}.md")
        url = rule.get("annotations", {}).get("runbook_url", "")
        if url != f"{RUNBOOK_BASE}docs/runbooks/{name}.md":
            problems.append(f"{name}: runbook_url {url!r}")
        if f"(runbooks/{name}.md)" not in listed:
            problems.append(f"{name}: not in the alerts table of docs/operations.md")
    problems += [f"docs/runbooks/{page}.md: no such alert" for page in sorted(pages - names)]
    return problems


def test_every_alert_has_its_runbook_and_every_runbook_an_alert() -> None:
    rules = alerts()
    assert len(rules) >= 8
    pages = {p.stem for p in RUNBOOKS.glob("*.md")}
    assert runbook_problems(rules, pages, OPERATIONS.read_text()) == []
    for rule in rules:
        page = (RUNBOOKS / f"{rule['alert']}.md").read_text()
        assert page.startswith(f"# {rule['alert']} ({rule['labels']['severity']})")
        for part in ("What it means", "Confirm", "What to do"):
            assert f"**{part}" in page, (rule["alert"], part)


def test_runbook_gaps_are_caught() -> None:
    rules = [{"alert": "A", "annotations": {"runbook_url": f"{RUNBOOK_BASE}docs/runbooks/A.md"}},
             {"alert": "B", "annotations": {"runbook_url": "https://example.org/B"}}]
    assert runbook_problems(rules, {"A", "C"}, "(runbooks/A.md)") == [
        "B: no docs/runbooks/B.md", "B: runbook_url 'https://example.org/B'",
        "B: not in the alerts table of docs/operations.md", "docs/runbooks/C.md: no such alert"]


# -- the configuration table ------------------------------------------------------------------

def env_names(name: str, field: Any) -> set[str]:
    """The environment variables that set a field."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return {alias}
    if isinstance(alias, AliasChoices):
        return {str(choice) for choice in alias.choices}
    return {f"SURGE_{name.upper()}"}


FIELD_OF = {env: name for name, field in Settings.model_fields.items()
            for env in env_names(name, field)}


def config_rows(text: str) -> list[tuple[list[str], str]]:
    """(variable names, default cell) of each row of the configuration table."""
    table = text.split(CONFIG_HEADER, 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]), cells[1]))
    return rows


def read_directly() -> set[str]:
    """Variables the server reads from the environment outside Settings."""
    sources = "".join(p.read_text() for d in ("common", "online", "batch") for p in
                      (ROOT / d).rglob("*.py"))
    return set(re.findall(r"environ(?:\.get)?\(\s*\"([A-Z][A-Z0-9_]*)\"", sources))


def literal(cell: str) -> Any:
    """A default cell as a value, or None when it is prose (the engine's, manifest name...)."""
    if cell == "" or cell.startswith("unset"):
        return "unset"
    if re.fullmatch(r"-?\d+(\.\d+)?", cell):
        return float(cell)
    if re.fullmatch(r"\d+ MiB", cell):
        return float(int(cell.split()[0]) * 1_048_576)
    if re.fullmatch(r"[A-Za-z0-9_.]+", cell):
        return cell.lower()
    return None


def same(documented: Any, default: Any) -> bool:
    if documented == "unset":
        return default in (None, "")
    if isinstance(default, bool):
        return documented == str(default).lower()
    if isinstance(default, int | float):
        return documented == float(default)
    return documented == str(default).lower()


def config_problems(text: str) -> tuple[list[str], int]:
    """What the table gets wrong (settings missing, names that are no setting, defaults that
    are not the code's) and how many defaults it was checked against."""
    rows = config_rows(text)
    named = {name for names, _ in rows for name in names}
    problems = [f"{name}: not in the table" for name, field in Settings.model_fields.items()
                if not env_names(name, field) & named]
    direct = read_directly()
    problems += [f"{name}: no such setting" for name in sorted(named)
                 if name not in FIELD_OF and name not in direct]
    compared = 0
    for names, cell in rows:
        fields = list(dict.fromkeys(FIELD_OF[n] for n in names if n in FIELD_OF))
        values = [v.strip() for v in cell.split(",")] if len(fields) > 1 else [cell]
        if len(values) != len(fields):
            continue
        for field, value in zip(fields, values, strict=True):
            documented = literal(value)
            if documented is None:
                continue
            compared += 1
            default = Settings.model_fields[field].default
            if not same(documented, default):
                problems.append(f"{field}: documented default {value!r}, the code's {default!r}")
    return problems, compared


def test_every_setting_is_in_the_configuration_table_with_its_default() -> None:
    problems, compared = config_problems(OPERATIONS.read_text())
    assert problems == []
    assert compared >= 50  # the defaults really were compared, not skipped as prose


def test_configuration_table_errors_are_caught() -> None:
    text = OPERATIONS.read_text()
    broken = (text.replace("| `SURGE_FAST_PATH` |", "| `SURGE_FAST_LANE` |")
              .replace("| `SURGE_MAX_QUEUE` | 1024 |", "| `SURGE_MAX_QUEUE` | 512 |"))
    problems, _ = config_problems(broken)
    assert problems == ["fast_path: not in the table", "SURGE_FAST_LANE: no such setting",
                        "max_queue: documented default '512', the code's 1024"]


# -- error codes ------------------------------------------------------------------------------

def error_code_problems(api: str, sources: str) -> list[str]:
    """Error codes the code can answer with that api.md does not document, and codes its
    error table lists that the code does not have."""
    in_code = set(re.findall(r'\bcode = "([a-z_]+)"', sources))
    in_code |= set(re.findall(r'\d{3}: "([a-z_]+)"', sources))  # the framework's, by status
    in_code |= set(re.findall(r'error_body\("([a-z_]+)"', sources))
    in_code |= set(re.findall(r'codes\.get\([^,]+, "([a-z_]+)"\)', sources))
    table = set(re.findall(r"^\| [\w ]+ \| `([a-z_]+)` \|", api, re.M))
    return ([f"{code}: not in docs/api.md" for code in sorted(in_code)
             if f"`{code}`" not in api]
            + [f"{code}: in the error table, not in the code" for code in sorted(table - in_code)])


def server_sources() -> str:
    return "".join(p.read_text() for d in ("common", "online", "batch")
                   for p in sorted((ROOT / d).rglob("*.py")))


def test_every_error_code_is_documented() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    assert error_code_problems(api, server_sources()) == []
    assert len(re.findall(r"^\| [\w ]+ \| `([a-z_]+)` \|", api, re.M)) >= 20


def test_error_code_gaps_are_caught() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    sources = server_sources() + '\n    code = "brand_new"\n'
    renamed = api.replace("| 404 | `not_found` |", "| 404 | `gone` |")
    assert error_code_problems(renamed, sources) == [
        "brand_new: not in docs/api.md", "not_found: not in docs/api.md",
        "gone: in the error table, not in the code"]


# -- names the docs use -----------------------------------------------------------------------

def code_text() -> str:
    """Everything but the docs and the tests: where a name must exist to be real."""
    parts = ["common", "online", "batch", "client", "loadtest", "knative", "grafana"]
    files = [p for d in parts for p in (ROOT / d).rglob("*") if p.is_file()
             and p.suffix in (".py", ".yaml", ".yml", ".js", ".toml")]
    files += [ROOT / "Makefile", ROOT / "Dockerfile", ROOT / "pyproject.toml"]
    return "".join(p.read_text(errors="replace") for p in files)


def unknown_names(pages: dict[str, str], settings_in: str, metrics_in: str) -> list[str]:
    """`SURGE_*` variables and `surge_*` metrics the pages name that do not exist: a variable
    must be a setting or be read by the code, a metric declared where metrics are."""
    unknown = set()
    for page, text in pages.items():
        for name in re.findall(r"\bSURGE_[A-Z0-9_]*[A-Z0-9]\b", text):
            if name not in FIELD_OF and not re.search(rf"\b{name}\b", settings_in):
                unknown.add(f"{page}: {name}")
        # not the recording rules' names (namespace:surge_...:rate5m) nor Redis keys (surge:)
        for name in re.findall(r"(?<![\w:])surge_[a-z0-9_]*[a-z0-9]\b", text):
            if f'"{re.sub(r"_(bucket|count|sum)$", "", name)}"' not in metrics_in:
                unknown.add(f"{page}: {name}")
    return sorted(unknown)


def test_names_in_the_docs_exist_in_the_code() -> None:
    # not the changelog: it names things as they were
    pages = {str(p.relative_to(ROOT)): p.read_text() for p in doc_files()
             if p.name != "CHANGELOG.md"}
    metrics = (ROOT / "common" / "metrics.py").read_text()
    assert unknown_names(pages, code_text(), metrics) == []


def test_unknown_names_are_caught() -> None:
    metrics = (ROOT / "common" / "metrics.py").read_text()
    text = ("`SURGE_MAX_QUEUE`, `SURGE_NO_SUCH`, `surge_batch_size_bucket`, `surge_nope_total`, "
            "`namespace:surge_cache_hit:ratio_rate5m`")
    assert unknown_names({"x.md": text}, code_text(), metrics) == [
        "x.md: SURGE_NO_SUCH", "x.md: surge_nope_total"]
