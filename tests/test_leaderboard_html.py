"""The HTML leaderboard as a reader sees it: the fixture results' page opened in a headless Chromium
(tests/headless_chromium.py), its rendered rows, kinds, intervals and bold best scores checked against the
tidy CSV, sorting by real clicks on a header, provenance links that reach the results files, the reported
numbers apart, no console error and no request beyond the page itself; and a screenshot, saved under the
test's tmp_path and, when MAMCLAP_LEADERBOARD_PNG names a file, copied there for a person to look at."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

import headless_chromium
from training.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "results"
pytestmark = pytest.mark.skipif(headless_chromium.executable() is None,
                                reason="chromium missing (Debian package chromium: make setup installs it)")

ROWS = "Array.from(document.querySelectorAll('#table-leaderboard tbody tr'))"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    assert main(["tables", str(FIXTURES), "--out", str(out)]) == 0
    with headless_chromium.Browser(width=1400, height=900) as browser:
        browser.load((out / "leaderboard.html").as_uri())
        yield browser, out


def tidy(out: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out / "leaderboard.tidy.csv").read_text())))


def column_values(browser, header: str) -> list[str]:
    """The model names of the leaderboard rows as shown, and the data-v of the column titled header."""
    return browser.evaluate(f"""(() => {{
        const ths = Array.from(document.querySelectorAll('#table-leaderboard thead tr:last-child th'));
        const col = ths.findIndex(th => th.title === {json.dumps(header)});
        return {ROWS}.map(r => [r.cells[0].textContent, r.cells[col].dataset.v]);
    }})()""")


def click_header(browser, header: str) -> None:
    """Scroll the header's button into view and click it with the mouse."""
    rect = browser.evaluate(f"""(() => {{
        const th = Array.from(document.querySelectorAll('#table-leaderboard thead th'))
                        .find(th => th.title === {json.dumps(header)});
        th.scrollIntoView({{block: 'center', inline: 'center'}});
        const r = th.querySelector('button').getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2];
    }})()""")
    browser.click(*rect)


def test_rows_kinds_and_cells(page):
    browser, out = page
    text_rows = list(csv.reader(io.StringIO((out / "leaderboard.csv").read_text())))[1:]
    shown = browser.evaluate(f"{ROWS}.map(r => [r.cells[0].textContent, r.dataset.kind, r.className])")
    assert [name for name, _, _ in shown] == [r[0] for r in text_rows]  # every model, the tables' order
    kinds = {r["model"]: r["kind"] for r in tidy(out)}
    assert all(kind == kinds[name] and cls == kind for name, kind, cls in shown)
    assert shown[-1] == ["logmel-baseline", "baseline", "baseline"]
    # hatched baseline rows: their background is the striped gradient, the pretrained rows' is not
    backgrounds = browser.evaluate(f"{ROWS}.map(r => getComputedStyle(r.cells[3]).backgroundImage)")
    assert "repeating-linear-gradient" in backgrounds[-1] and backgrounds[0] == "none"
    # a cell shows the mean, the 95% interval and n; its tooltip the per-seed scores
    cell = browser.evaluate(f"""(() => {{
        const row = {ROWS}.find(r => r.cells[0].textContent === 'mam-clap-small');
        const ths = Array.from(document.querySelectorAll('#table-leaderboard thead tr:last-child th'));
        const td = row.cells[ths.findIndex(th => th.title === 'mini_esc (top1_acc)')];
        return [td.innerText.replace(/\\s+/g, ' ').trim(), td.title];
    }})()""")
    assert cell[0] == "0.650 ± 0.138 n=3"
    assert "(seed 0)" in cell[1] and "(seed 2)" in cell[1] and "95% t interval" in cell[1]
    # HEAR means come first, then the tasks under their group's span, SUPERB under speech
    spans = browser.evaluate("Array.from(document.querySelectorAll('#table-leaderboard tr.spans th'))"
                             ".map(th => [th.textContent, th.colSpan])")
    assert spans == [["", 3], ["HEAR means", 4], ["environmental", 2], ["music", 1], ["speech", 3]]


def test_best_score_of_each_column_is_bold(page):
    browser, out = page
    best: dict[tuple, set] = {}
    top: dict[tuple, float] = {}
    for r in tidy(out):
        if r["mean"]:
            key, mean = (r["harness"], r["group"], r["task"]), float(r["mean"])
            if mean > top.get(key, -1):
                top[key], best[key] = mean, {r["model"]}
            elif mean == top[key]:
                best[key].add(r["model"])
    shown = browser.evaluate(f"""(() => {{
        const ths = Array.from(document.querySelectorAll('#table-leaderboard thead tr:last-child th'));
        const out = {{}};
        {ROWS}.forEach(r => Array.from(r.cells).forEach((td, i) => {{
            if (td.classList.contains('best')) (out[ths[i].title] = out[ths[i].title] || []).push(r.cells[0].textContent);
        }}));
        return out;
    }})()""")
    weights = browser.evaluate("getComputedStyle(document.querySelector('#table-leaderboard td.best .m')).fontWeight")
    assert int(weights) >= 700
    assert len(shown) == len(best) == 10  # 6 task columns, 3 group means, overall: each has its best
    labels = {("hear", "overall", ""): "overall", ("hear", "music", ""): "music mean",
              ("hear", "environmental", "mini_esc"): "mini_esc (top1_acc)",
              ("superb", "speech", "speech_commands"): "SUPERB KS (top1_acc)"}
    for key, label in labels.items():
        assert set(shown[label]) == best[key], label


def test_sorting_by_clicks(page):
    browser, out = page
    overall = {r["model"]: float(r["mean"]) for r in tidy(out) if r["group"] == "overall" and r["mean"]}
    unscored = sorted(m for m in {r["model"] for r in tidy(out)} if m not in overall)
    assert unscored  # a model whose overall mean is missing: it must stay last both ways
    click_header(browser, "model")  # a text column sorts A-Z first
    names = [name for name, _ in column_values(browser, "model")]
    assert names == sorted(names) and names != [r["model"] for r in tidy(out)][::11]
    click_header(browser, "overall")
    rows = column_values(browser, "overall")
    assert [name for name, _ in rows] == sorted(overall, key=lambda m: -overall[m]) + [m for m, _ in rows[-len(unscored):]]
    assert sorted(name for name, v in rows if v == "") == unscored and all(v == "" for _, v in rows[-len(unscored):])
    assert browser.evaluate("document.querySelector('#table-leaderboard th[aria-sort]').title") == "overall"
    assert browser.evaluate("document.querySelector('#table-leaderboard th[aria-sort]')"
                            ".getAttribute('aria-sort')") == "descending"
    click_header(browser, "overall")  # again: ascending, the missing still last
    rows = column_values(browser, "overall")
    assert [float(v) for _, v in rows if v] == pytest.approx(sorted(overall.values()), rel=1e-5)
    assert all(v == "" for _, v in rows[-len(unscored):])
    click_header(browser, "overall")  # and back: best first (the state the screenshot shows)
    assert [float(v) for _, v in column_values(browser, "overall") if v] == pytest.approx(
        sorted(overall.values(), reverse=True), rel=1e-5)


def test_provenance_links_and_reported_apart(page):
    browser, out = page
    href = browser.evaluate(f"{ROWS}.find(r => r.cells[0].textContent === 'mam-clap-small')"
                            ".cells[0].querySelector('a').getAttribute('href')")
    assert href == "#prov-mam-clap-small"
    prov = browser.evaluate(f"""(() => {{
        const box = document.querySelector({json.dumps(href)});
        return [box.querySelector('h3').textContent, box.querySelectorAll('tbody tr').length,
                Array.from(box.querySelectorAll('a')).map(a => a.getAttribute('href'))];
    }})()""")
    assert prov[0] == "mam-clap-small pretrained" and prov[1] == 3  # seeds 0, 1, 2
    files = sorted((out / unquote(h)).resolve() for h in prov[2])
    assert files == sorted(p.resolve() for p in FIXTURES.glob("mam-clap-small.*.json"))  # relative links that work
    # the ablation's rows link to the runs behind them
    run_links = browser.evaluate("Array.from(document.querySelectorAll('#table-positions .members a'))"
                                 ".map(a => [a.textContent, document.querySelector(a.getAttribute('href')) !== null])")
    assert ["masked-a", True] in run_links and ["masked-b", True] in run_links
    reported = browser.evaluate("""(() => {
        const box = document.querySelector('section.reported');
        return [box.querySelectorAll('tbody tr').length, box.textContent.includes('NOT measured here'),
                box.querySelector('#table-leaderboard') === null,
                getComputedStyle(box).borderTopStyle];
    })()""")
    assert reported == [6, True, True, "dashed"]
    leaderboard_text = browser.evaluate("document.querySelector('#table-leaderboard').textContent")
    assert "BEATs" not in leaderboard_text and "48.5" not in leaderboard_text


def test_no_errors_no_network_and_a_screenshot(page, tmp_path):
    browser, out = page
    html = (out / "leaderboard.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing to fetch at view time
    assert browser.problems() == []
    assert browser.requests() == [(out / "leaderboard.html").as_uri()]
    browser.evaluate("window.scrollTo(0, 0)")
    shot = browser.screenshot(tmp_path / "leaderboard.png", full_page=False)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 900)
    if os.environ.get("MAMCLAP_LEADERBOARD_PNG"):
        shutil.copyfile(shot, os.environ["MAMCLAP_LEADERBOARD_PNG"])
