"""README.md and docs/*.md stay true: settings and their defaults, make targets, paths, ports,
links and anchors, figures, modules.

Each check reads the pages under a root (the repo, or a temporary copy in the negative
controls) and returns what is wrong; the code it is checked against is always the repo's.
"""
from __future__ import annotations

import difflib
import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llmfn.settings import describe
from scripts import config_table
from scripts.procs import REPO_ROOT as ROOT

# Top-level folders whose paths the pages name; a path under one of them must exist.
TREE = ("functions", "llmfn", "scripts", "tests", "deploy", "eventing", "bench", "load", "docs",
        "mk", ".ci")
TREE_ALT = "|".join(re.escape(t) for t in TREE)
PATH_RE = re.compile(rf"(?:^|(?<=[\s`(\"'=]))((?:{TREE_ALT})/[\w./-]*)")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
QUOTED_HEADING_RE = re.compile(r"(?:docs/)?([\w-]+\.md) \"([^\"]+)\"")
MAKE_RE = re.compile(r"\bmake ([a-z][\w-]*)")
PORT_RE = re.compile(r"(?:127\.0\.0\.1|localhost):(\d+)")
CODE_FENCE = re.compile(r"^\s*```")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)  # `x`, or ``x `y` z``


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_and_code(text: str) -> tuple[str, str]:
    """(text outside fenced code blocks, text inside them)."""
    prose, code, inside = [], [], False
    for line in text.splitlines():
        if CODE_FENCE.match(line):
            inside = not inside
            continue
        (code if inside else prose).append(line)
    return "\n".join(prose), "\n".join(code)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    prose, _ = prose_and_code(path.read_text())
    return [m.group(1) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", prose, re.M)]


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in headings(path):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


# -- settings and their defaults -----------------------------------------------------------------
def allowed_defaults() -> dict[str, set[str]]:
    """Every setting key -> the defaults a page may quote: the class's, and each function's own."""
    out: dict[str, set[str]] = {}
    for _title, cls in config_table.sections():
        for key, default, _doc in describe(cls):
            out.setdefault(key, set()).add(norm(default))
    for _fn, defaults in config_table.function_defaults():
        for key, value in defaults.items():
            out.setdefault(key, set()).add(norm(value))
    return out


def norm(value) -> str:
    """A default as text, so that `5`, `5.0`, `True`, `true` compare as the code means them."""
    text = str(value).strip().strip("`").strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    if text.lower() in ("", "none", "-"):
        return ""
    try:
        number = float(text.replace(",", ""))
    except ValueError:
        return text
    return repr(int(number)) if number == int(number) else repr(number)


# A quoted default: a number with an optional time unit, or true/false, maybe in backticks.
VALUE_RE = re.compile(r"`?(?:-?\d[\d,]*(?:\.\d+)?(?: ?(?:s|ms|min))?|true|false)`?", re.I)
_V = r"(`?[-\w.,]*\w`?(?: (?:s|ms|min)\b)?)"
DEFAULT_FORMS = [
    re.compile(r"`([A-Z][A-Z0-9_]+)` \((?:default )?" + _V + r"\)"),
    re.compile(r"`([A-Z][A-Z0-9_]+)` (?:[^\s`()|]+ ){1,4}\(default " + _V + r"\)"),
    re.compile(r"`([A-Z][A-Z0-9_]+)`, " + _V + r"(?=[ ),;.]|$)"),
    re.compile(r"`([A-Z][A-Z0-9_]+)` defaults to " + _V),
]
SECONDS = {"s": 1.0, "ms": 0.001, "min": 60.0}


def in_units(key: str, value: str) -> str:
    """``value`` normalised in the unit of ``key`` (`_S` seconds, `_MS` milliseconds), so that
    "2000 ms" quoted for a `_S` setting compares as 2."""
    m = re.fullmatch(r"`?(-?[\d,.]+)`? ?(s|ms|min)", value.strip().strip("`"))
    if not m:
        return norm(value.strip().rstrip(".,"))
    seconds = float(m.group(1).replace(",", "")) * SECONDS[m.group(2)]
    if key.endswith("_MS"):
        return norm(round(seconds * 1000, 6))
    if key.endswith("_S"):
        return norm(round(seconds, 6))
    return norm(m.group(1))


def literal(text: str) -> bool:
    """A quoted value is checked only when it is one literal, not prose ("1 MiB", "the CPU")."""
    return re.fullmatch(r"`?[\w./:%+-]*`?", text.strip()) is not None


def default_errors(root: Path) -> list[str]:
    known = allowed_defaults()
    errors = []

    def check(page: Path, key: str, value: str, where: str) -> None:
        if key in known and literal(value.strip().strip("`").split(" ")[0]) \
                and in_units(key, value) not in known[key]:
            errors.append(f"{page.name}: {where} says {key} defaults to {value.strip()!r}; "
                          f"the code: {sorted(known[key])}")

    for page in pages(root):
        prose, _ = prose_and_code(page.read_text())
        column = None
        for line in prose.splitlines():
            if not line.startswith("|"):
                column = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if column is None:  # the header row of a table
                column = next((i for i, c in enumerate(cells) if c.lower() == "default"), -1)
                continue
            first = re.fullmatch(r"`([A-Z][A-Z0-9_]+)`", cells[0])
            if column > 0 and first and len(cells) > column and set(cells[column]) - set("-: "):
                check(page, first.group(1), cells[column], "a table")
        flat = re.sub(r"\s+", " ", prose)
        # How prose quotes a default: `KEY` (V), `KEY` (default V), `KEY` <up to 4 words>
        # (default V), `KEY` (V s), `KEY`, V s, `KEY` defaults to V; V may carry a unit.
        for form in DEFAULT_FORMS:
            for m in form.finditer(flat):
                value = m.group(2).strip()
                if VALUE_RE.fullmatch(value):
                    check(page, m.group(1), value, "the text")
        # `KEY=V` after "default" in the same sentence and table cell ("embed's own defaults:
        # `N_CTX=512`, ..."), not a value set on purpose ("`TRUNCATE=true` cuts inputs").
        for m in re.finditer(r"`([A-Z][A-Z0-9_]+)=([^`]*)`", flat):
            before = re.split(r"\. |\|", flat[max(0, m.start() - 150):m.start()])[-1]
            if "default" in before.lower():
                check(page, m.group(1), m.group(2), "the text")
    return errors


def test_configuration_table_is_the_generated_one():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert config_table.table() in page, \
        "docs/configuration.md is stale: paste the output of scripts/config_table.py"


def test_every_setting_is_on_the_configuration_page_with_its_default():
    page = (ROOT / "docs" / "configuration.md").read_text()
    for _title, cls in config_table.sections():
        for key, _default, _doc in describe(cls):
            assert f"| `{key}` |" in page, key


def test_quoted_defaults_match_the_settings():
    assert default_errors(ROOT) == []


# -- make targets, paths, ports ------------------------------------------------------------------
def make_targets(root: Path = ROOT) -> set[str]:
    text = (root / "Makefile").read_text() + "".join(
        p.read_text() for p in sorted((root / "mk").glob("*.mk")))
    targets = set()
    for m in re.finditer(r"^([\w./$() -]+?)\s*:(?!=)", text, re.M):
        targets.update(t for t in m.group(1).split() if re.fullmatch(r"[a-z][\w-]*", t))
    return targets


def make_errors(root: Path) -> list[str]:
    """`make X` in code (backticks, fenced blocks) must be a target; in plain prose too, unless
    X is an English word there ("make sure"): one with no hyphen that is no near miss of a
    target ("make runn" is one)."""
    targets = make_targets()
    errors = []
    for page in pages(root):
        prose, code = prose_and_code(page.read_text())
        spans = [m.group(2) for m in CODE_SPAN.finditer(prose)] + code.splitlines()
        for span in spans:
            for m in MAKE_RE.finditer(span):
                if m.group(1) not in targets:
                    errors.append(f"{page.name}: `make {m.group(1)}`: no such target")
        for m in MAKE_RE.finditer(CODE_SPAN.sub(" ", prose)):
            word = m.group(1)
            if word not in targets and ("-" in word or difflib.get_close_matches(
                    word, targets, n=1, cutoff=0.75)):
                errors.append(f"{page.name}: make {word}: no such target")
    return errors


def path_errors(root: Path) -> list[str]:
    """Paths from the repo root; `llmfn/x.py` may also be the runtime package's file as a
    function folder (and its image) holds it."""
    errors = []
    for page in pages(root):
        text = page.read_text()
        for m in PATH_RE.finditer(text):
            path = m.group(1).rstrip(".,:;")
            if text[m.end():m.end() + 1] in ("*", "<", "{", "$"):
                continue  # a pattern (`tests/test_manifests_*.py`), not one path
            if re.fullmatch(r"functions/\w+/llmfn/?|llmfn/(generate|embed|audit)", path):
                continue  # the vendored copy `make vendor` makes (git-ignored); image names
            if not any((base / path).exists() for base in (ROOT, ROOT / "llmfn" / "src")):
                errors.append(f"{page.name}: {path} does not exist")
    return errors


# A bare file name of the kinds kept at the repo root (or beside a function): it must be a file
# of the repo (any folder), so that `requirements-dev.lock` or `Containerfile.gpu` cannot be named.
ROOT_FILE_RE = re.compile(
    r"(?<![\w/.$<{-])((?:requirements|constraints|pyproject|conftest|pytest)[\w-]*\.[\w.]+"
    r"|(?:Containerfile|Makefile)(?:\.[\w-]+)?|[\w-]+\.(?:lock|toml|mk|cfg|ini))(?![\w/*<{-])")


def repo_file_names() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return {name.rsplit("/", 1)[-1] for name in listed}


def root_file_errors(root: Path) -> list[str]:
    names = repo_file_names()
    errors = []
    for page in pages(root):
        for m in ROOT_FILE_RE.finditer(page.read_text()):
            name = m.group(1).rstrip(".")
            if name not in names and name.removesuffix("s") not in names:
                errors.append(f"{page.name}: {name}: no such file in the repo")
    return errors


def port_owners() -> dict[int, set[str]]:
    """Port -> who listens on it: scripts/run.py's map (the local broker and the functions),
    MinIO and FerretDB (scripts/services.py), queue-proxy's fixed ports in a pod
    (scripts/knative_pod.py), whose function listens on 8080 as the broker does locally."""
    from scripts import broker, knative_pod, run, services
    owners = {port: {name} for name, (_env, port, _key) in run.FUNCTIONS.items()}
    owners[broker.DEFAULT_PORT] = {"broker"}
    for cls, name in ((services.MinioServer, "minio"), (services.FerretDBServer, "ferretdb")):
        owners[inspect.signature(cls).parameters["port"].default] = {name}
    for port in (knative_pod.QUEUE_PORT, knative_pod.ADMIN_PORT, knative_pod.METRICS_PORT):
        owners.setdefault(port, set()).add("queue-proxy")
    owners[knative_pod.USER_PORT] |= {"generate", "embed", "audit", "function", "gunicorn"}
    return owners


OWNER_RE = re.compile(r"\b(generate|embed|audit|broker|minio|ferretdb|queue-proxy|function|"
                      r"gunicorn)\b(?!\.)", re.I)


def port_owner_errors(root: Path) -> list[str]:
    """A known port must follow its own owner's name: "audit (8083)", "embed on
    http://127.0.0.1:8082", "queue-proxy's 8012". The name looked at is the nearest one before
    the port in the same clause (no `|`, `;`, `,` or sentence end between them) and, for a port
    in a code span (a quoted message: `dial tcp 127.0.0.1:8080`), in the same span."""
    owners = port_owners()
    known = "|".join(str(p) for p in sorted(owners))
    errors = []
    for page in pages(root):
        prose, code = prose_and_code(page.read_text())
        for chunk in [re.sub(r"\s+", " ", prose), *code.splitlines()]:
            for m in re.finditer(rf"(?<![\w.-])(?:(?:127\.0\.0\.1|localhost)?:)?({known})(?![\w-])",
                                 chunk):
                start = max(0, m.start() - 80)
                if chunk[:m.start()].count("`") % 2:  # in a code span: only the span counts
                    start = max(start, chunk.rindex("`", 0, m.start()) + 1)
                clause = re.split(r"[|;,]|\. ", chunk[start:m.start()])[-1]
                names = OWNER_RE.findall(clause)
                port = int(m.group(1))
                if names and names[-1].lower() not in owners[port]:
                    errors.append(f"{page.name}: port {port} named after {names[-1]!r}; it is "
                                  f"{'/'.join(sorted(owners[port]))}'s")
    return errors


def port_errors(root: Path) -> list[str]:
    """A loopback port a page names is one the code uses: a default in scripts/, mk/, llmfn/."""
    code = "\n".join(p.read_text() for folder in ("scripts", "llmfn/src/llmfn", "mk", "load")
                     for p in sorted((ROOT / folder).rglob("*"))
                     if p.suffix in (".py", ".mk", ".sh") and p.is_file())
    errors = []
    for page in pages(root):
        for port in set(PORT_RE.findall(page.read_text())):
            if not re.search(rf"(?<![\d.]){port}(?!\d)", code):
                errors.append(f"{page.name}: port {port} is not one the code uses")
    return errors


def prerequisites(target: str) -> set[str]:
    text = (ROOT / "Makefile").read_text() + "".join(
        p.read_text() for p in sorted((ROOT / "mk").glob("*.mk")))
    return {t for m in re.finditer(rf"^{target}\s*:(?!=)([^\n]*)", text, re.M)
            for t in m.group(1).split()}


def test_benchmarks_page_says_what_make_bench_runs():
    row = re.search(r"^\| `make bench` \|([^|]*)\|", (ROOT / "docs" / "benchmarks.md").read_text(),
                    re.M)
    assert row and set(re.findall(r"`([\w-]+)`", row.group(1))) == prerequisites("bench")


def test_make_targets_named_exist():
    assert {"run", "test", "bench", "deploy", "load", "lock"} <= make_targets()
    assert make_errors(ROOT) == []


def test_paths_named_exist():
    assert path_errors(ROOT) == []


def test_ports_named_are_the_codes():
    assert port_errors(ROOT) == []


def test_ports_go_with_their_functions():
    assert {8080, 8081, 8082, 8083, 9000, 27017, 8012, 8022, 9090} <= set(port_owners())
    assert port_owner_errors(ROOT) == []


def test_root_files_named_exist():
    assert root_file_errors(ROOT) == []


# -- links, anchors, section names, figures, modules ----------------------------------------------
def link_errors(root: Path) -> list[str]:
    errors = []
    for page in pages(root):
        prose, _ = prose_and_code(page.read_text())
        for target in LINK_RE.findall(prose):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check here
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                errors.append(f"{page.name}: link to {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                errors.append(f"{page.name}: link to {target}: no such heading")
        for name, title in QUOTED_HEADING_RE.findall(re.sub(r"\s+", " ", prose)):
            dest = root / "docs" / name
            if dest.exists() and not any(h.startswith(title) for h in headings(dest)):
                errors.append(f"{page.name}: {name} \"{title}\": no such heading")
    return errors


def test_links_and_anchors_resolve():
    assert link_errors(ROOT) == []


def test_every_figure_is_shown_by_a_page():
    text = "".join(p.read_text() for p in pages(ROOT))
    unused = [p.name for p in sorted((ROOT / "docs" / "img").glob("*"))
              if f"img/{p.name}" not in text]
    assert unused == []


def test_architecture_lists_every_runtime_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p.name for p in sorted((ROOT / "llmfn" / "src" / "llmfn").iterdir())
               if p.suffix in (".py", ".json") and p.name != "__init__.py"
               and f"src/llmfn/{p.name}" not in page]
    assert missing == []


# -- negative controls: each check fails on a copy made wrong on purpose --------------------------
@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def spoil(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def new_errors(check, root: Path) -> list[str]:
    """What ``check`` finds in the spoiled copy beyond what it finds in the repo."""
    before = check(ROOT)
    return sorted(e for e in check(root) if e not in before)


def test_a_wrong_default_fails(copy):
    spoil(copy / "docs" / "configuration.md", "| `GUNICORN_THREADS` | `16` |",
          "| `GUNICORN_THREADS` | `8` |")
    spoil(copy / "docs" / "embeddings.md", "`GUNICORN_THREADS` (16)", "`GUNICORN_THREADS` (8)")
    spoil(copy / "docs" / "embeddings.md", "own defaults: `N_CTX=512`", "own defaults: `N_CTX=256`")
    assert new_errors(default_errors, copy) == [
        "configuration.md: a table says GUNICORN_THREADS defaults to '`8`'; the code: ['16']",
        "embeddings.md: the text says GUNICORN_THREADS defaults to '8'; the code: ['16']",
        "embeddings.md: the text says N_CTX defaults to '256'; the code: ['2048', '512']"]


def test_a_wrong_target_path_port_link_fails(copy):
    readme = copy / "README.md"
    spoil(readme, "make run ", "make runn ")
    spoil(readme, "docs/development.md)", "docs/developmnt.md)")
    readme.write_text(readme.read_text() + "\nSee `scripts/no_such_file.py` at "
                      "http://127.0.0.1:18081 and [x](docs/deploy.md#no-such-heading),"
                      " docs/deploy.md \"No such section\".\n")
    assert new_errors(make_errors, copy) == ["README.md: `make runn`: no such target"]
    assert new_errors(path_errors, copy) == ["README.md: docs/developmnt.md does not exist",
                                             "README.md: scripts/no_such_file.py does not exist"]
    assert new_errors(port_errors, copy) == ["README.md: port 18081 is not one the code uses"]
    assert new_errors(link_errors, copy) == [
        'README.md: deploy.md "No such section": no such heading',
        "README.md: link to docs/deploy.md#no-such-heading: no such heading",
        "README.md: link to docs/developmnt.md: no such file"]


def test_wrong_defaults_in_prose_fail(copy):
    """The prose forms of a default, each made wrong; a right one in another unit still passes."""
    spoil(copy / "docs" / "deploy.md", "`SHUTDOWN_GRACE_S` (25 s)", "`SHUTDOWN_GRACE_S` (30 s)")
    spoil(copy / "docs" / "generate.md", "`SLOTS` generations (default 0)",
          "`SLOTS` generations (default 8)")
    spoil(copy / "docs" / "events.md", "`RETRY_AFTER_S`, 2 s", "`RETRY_AFTER_S`, 9 s")
    readme = copy / "README.md"
    readme.write_text(readme.read_text() + "\n`SLOTS` defaults to 8. `N_CTX` defaults to `2048`."
                      " `RETRY_AFTER_S` (2000 ms) and `SSE_HEARTBEAT_S`, 5000 ms.\n")
    assert new_errors(default_errors, copy) == [
        "README.md: the text says SLOTS defaults to '8'; the code: ['0']",
        "deploy.md: the text says SHUTDOWN_GRACE_S defaults to '30 s'; the code: ['25']",
        "events.md: the text says RETRY_AFTER_S defaults to '9 s'; the code: ['2']",
        "generate.md: the text says SLOTS defaults to '8'; the code: ['0']"]


def test_wrong_prose_target_root_file_port_owner_fail(copy):
    readme = copy / "README.md"
    readme.write_text(readme.read_text() + "\nThen make runn, make sure it works, and run "
                      "make test-docz. Pins: `requirements-dev.lock`, the GPU image: "
                      "Containerfile.gpu. The dashboard: audit on http://127.0.0.1:8082/dashboard,"
                      " embed on http://127.0.0.1:8082, MinIO (27017), queue-proxy's 8012.\n")
    assert new_errors(make_errors, copy) == ["README.md: make runn: no such target",
                                             "README.md: make test-docz: no such target"]
    assert new_errors(root_file_errors, copy) == [
        "README.md: Containerfile.gpu: no such file in the repo",
        "README.md: requirements-dev.lock: no such file in the repo"]
    assert new_errors(port_owner_errors, copy) == [
        "README.md: port 27017 named after 'MinIO'; it is ferretdb's",
        "README.md: port 8082 named after 'audit'; it is embed's"]
