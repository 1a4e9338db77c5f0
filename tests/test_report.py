"""``schedy report``: its data, its figures, the file, and the page in a real browser.

The data and figure steps are checked on seeded experiments whose every
number is known (a PBT run through ``next_job``, a random search, a manual
queue). The browser tests open the written file in headless Chromium
(Debian's ``chromium`` package) and read the page back with ``--dump-dom``:
every plot must hold rendered SVG, no script error or blocked request may
happen (the page writes both into ``#report-errors``), and the job table
must sort and filter when clicked (a small script appended to a copy of the
report drives it and writes what it saw into the DOM).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import schedy
from schedy._report import figures, render, report_data, write_report
from schedy.cli import main

pytest.importorskip("plotly")

CHROMIUM = "/usr/bin/chromium"


# -- experiments whose numbers are known -----------------------------------------


def pbt_experiment(db: schedy.SchedyDB, name: str = "pbt") -> schedy.PopulationBasedTraining:
    """A seeded PBT run, population 4, 6 generations; scores climb with the
    generation and prefer lr near 1e-2; results carry a per-epoch history."""
    experiment = schedy.PopulationBasedTraining(
        name,
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.25),
        explore={"lr": schedy.pbt.Perturb(), "dropout": schedy.pbt.Perturb(high=0.9)},
        initial_distributions={
            "lr": schedy.random.LogUniform(1e-4, 1e-1),
            "dropout": schedy.random.Uniform(0.0, 0.8),
            "act": schedy.random.Choice(["relu", "tanh"]),
        },
        population_size=4,
        max_generations=6,
        seed=5,
    )
    db.add_experiment(experiment)
    rng = random.Random(5)
    while True:
        try:
            job = experiment.next_job(timeout=0)
        except schedy.errors.NoJobError:
            return experiment
        with job:
            h, g = job.hyperparameters, job.generation or 0
            acc = 0.5 + 0.07 * g - 0.05 * abs(math.log10(h["lr"]) + 2) + rng.gauss(0, 0.005)
            history = job.results.get("history", {"acc": []})
            job.results.update(acc=acc, history={"acc": [*history["acc"], acc]})
            job.results["model_path"] = f"ckpt/{job.id}"


def random_experiment(db: schedy.SchedyDB) -> schedy.RandomSearch:
    experiment = schedy.RandomSearch(
        "random",
        {
            "lr": schedy.random.LogUniform(1e-4, 1e-1),
            "layers": schedy.random.IntUniform(1, 4),
            "act": schedy.random.Choice(["relu", "tanh"]),
        },
        seed=2,
    )
    db.add_experiment(experiment)
    for index in range(24):
        with experiment.next_job() as job:
            h = job.hyperparameters
            job.results["loss"] = abs(math.log10(h["lr"]) + 2) + 0.1 * h["layers"]
            if index == 3:
                job.results["loss"] = float("nan")  # a diverged run: no score, never a crash
    return experiment


@pytest.fixture
def db(tmp_path: Path) -> schedy.SchedyDB:
    handle = schedy.SchedyDB(f"sqlite:///{tmp_path}/report.db")
    yield handle
    handle.close()


# -- the data step ------------------------------------------------------------------


def test_report_data_is_json_with_the_best_lineage(db: schedy.SchedyDB) -> None:
    experiment = pbt_experiment(db)
    data = report_data(experiment)
    json.dumps(data, allow_nan=False)  # strict JSON: a dashboard can send it as it is
    jobs = data["jobs"]
    everything = list(experiment.all_jobs())
    assert jobs["id"] == [job.id for job in everything]
    assert jobs["score"] == [job.results["acc"] for job in everything]
    assert "history" not in jobs["results"] and "acc" not in jobs["results"]
    assert jobs["results"]["model_path"][0] == f"ckpt/{everything[0].id}"
    best = experiment.best()
    assert best is not None and data["best"]["id"] == best.id
    assert data["best"]["lineage"] == [step["job_id"] for step in experiment.best_schedule()]
    assert data["score"] == {"name": "acc", "objective": "max", "lower_is_better": False}
    described = {entry["name"]: entry for entry in data["hyperparameters"]}
    assert described["lr"] == {"name": "lr", "numeric": True, "log": True, "explored": True}
    assert described["act"]["numeric"] is False and described["act"]["explored"] is False
    assert [entry["name"] for entry in data["hyperparameters"]][-1] == "act"  # explored first


def test_only_finished_jobs_have_a_score(db: schedy.SchedyDB) -> None:
    # A running or crashed PBT job still holds the results it started from (its
    # parent's): they are not its score.
    experiment = schedy.PopulationBasedTraining(
        "open",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.5),
        initial_distributions={"lr": schedy.random.Uniform(0, 1)},
        population_size=2,
        seed=1,
    )
    db.add_experiment(experiment)
    for _ in range(4):
        with experiment.next_job() as job:
            job.results["acc"] = job.hyperparameters["lr"]
    with pytest.raises(RuntimeError), experiment.next_job() as crashed:
        raise RuntimeError("lost <b>it</b>")
    running = experiment.next_job()
    assert "acc" in crashed.results and "acc" in running.results  # inherited
    data = report_data(experiment)
    scores = dict(zip(data["jobs"]["id"], data["jobs"]["score"]))
    assert scores[crashed.id] is None and scores[running.id] is None
    assert sum(score is not None for score in scores.values()) == 4
    errors = dict(zip(data["jobs"]["id"], data["jobs"]["error"]))
    assert errors[crashed.id] == "RuntimeError: lost <b>it</b>"
    tree = next(f for f in figures(data) if f["id"] == "lineage")
    crosses = next(t for t in tree["data"] if t["name"] == "job without a score")
    assert len(crosses["x"]) == 2
    page = render(data)
    assert "lost <b>it</b>" not in page  # escaped wherever it is shown
    running.status = schedy.Job.DONE
    running.put()


def test_a_search_scores_by_its_most_reported_result(db: schedy.SchedyDB) -> None:
    data = report_data(random_experiment(db))
    assert data["score"]["name"] == "loss" and data["score"]["lower_is_better"]
    assert data["best"] is None  # no objective, no "best"
    assert data["jobs"]["score"][3] is None  # NaN is no score
    unscored = report_data(db.get_experiment("random"), score="nothing")
    assert unscored["jobs"]["score"] == [None] * 24


# -- figures ---------------------------------------------------------------------------


def _trace(figure: dict, name: str) -> dict:
    return next(trace for trace in figure["data"] if trace.get("name") == name)


def test_pbt_figures_mark_exploits_and_the_best_schedule(db: schedy.SchedyDB) -> None:
    experiment = pbt_experiment(db)
    data = report_data(experiment)
    built = {figure["id"]: figure for figure in figures(data)}
    assert list(built) == ["score", "lineage", "schedule", "donors", "diversity", "timeline"]
    jobs = list(experiment.all_jobs())
    exploits = [job for job in jobs if job.exploited_from is not None]
    assert exploits, "the seeded run has exploits"
    marks = _trace(built["score"], "exploit (donor's colour)")
    assert marks["x"] == [job.generation for job in exploits]
    assert marks["y"] == [job.results["acc"] for job in exploits]
    assert all("← member" in text for text in marks["text"])
    schedule = experiment.best_schedule()
    best = _trace(built["score"], "best schedule")
    assert best["x"] == [step["generation"] for step in schedule]
    assert best["y"] == [step["score"] for step in schedule]
    # The tree: an exploit edge per exploit, a continue edge per other job with a parent.
    tree = built["lineage"]
    assert len(_trace(tree, "exploit (copy)")["x"]) == 3 * len(exploits)
    continued = [job for job in jobs if job.parent_id and job.exploited_from is None]
    assert len(_trace(tree, "continue")["x"]) == 3 * len(continued)
    donors = _trace(built["donors"], "was copied (donor)")
    assert sum(donors["y"]) == len(exploits)
    lr = next(t for t in built["schedule"]["data"] if t.get("name") == "best schedule")
    assert lr["y"] == [step["hyperparameters"]["lr"] for step in schedule]
    assert "schedy does not store which worker" in built["timeline"]["note"]


def test_search_figures(db: schedy.SchedyDB) -> None:
    built = {figure["id"]: figure for figure in figures(report_data(random_experiment(db)))}
    assert list(built) == ["distribution", "hp-vs-score", "parallel", "timeline"]
    assert len(built["distribution"]["data"][0]["x"]) == 23  # the NaN one left out
    assert len(built["hp-vs-score"]["data"]) == 3  # one panel per hyperparameter
    dimensions = built["parallel"]["data"][0]["dimensions"]
    assert [d["label"] for d in dimensions] == ["lr (log)", "layers", "act", "loss"]


def test_an_empty_or_unscored_experiment_still_reports(db: schedy.SchedyDB) -> None:
    manual = schedy.ManualSearch("manual")
    db.add_experiment(manual)
    assert "no job yet" in render(report_data(manual))
    manual.add_job({"x": 1}, status=schedy.Job.DONE, results={"note": "no number"})
    data = report_data(manual)
    assert data["score"]["name"] is None
    assert [figure["id"] for figure in figures(data)] == ["timeline"]
    assert 'id="jobs"' in render(data)


def test_write_report_is_one_self_contained_file(db: schedy.SchedyDB, tmp_path: Path) -> None:
    experiment = pbt_experiment(db)
    path = write_report(experiment, tmp_path / "r.html")
    assert path == (tmp_path / "r.html").resolve()
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)  # nothing loaded
    embedded = page.split('id="figures-data">')[1].split("</script>")[0]
    assert "<" not in embedded and json.loads(embedded)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.html")] == []


def test_names_and_values_are_escaped(db: schedy.SchedyDB, tmp_path: Path) -> None:
    manual = schedy.ManualSearch("<b>x</b></script>")
    db.add_experiment(manual)
    manual.add_job(
        {"arch": "</script><script>alert(1)</script>"}, status="DONE", results={"score": 1.0}
    )
    page = render(report_data(manual))
    assert "<script>alert(1)" not in page and "<b>x</b>" not in page


def test_import_schedy_does_not_import_plotly_rich_or_pandas() -> None:
    code = (
        "import sys, schedy, schedy.cli; "
        "print([m for m in ('plotly', 'rich', 'pandas') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_without_plotly_the_error_names_the_extra(
    db: schedy.SchedyDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    with pytest.raises(ImportError, match=r"pip install 'schedy\[report\]'"):
        render(report_data(pbt_experiment(db)))


def test_cli_report(
    db: schedy.SchedyDB,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pbt_experiment(db)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/report.db"
    assert main(["--db", url, "report", "pbt"]) == 0
    out = capsys.readouterr().out
    assert out == f"Report of 'pbt': {tmp_path / 'report.html'}\n"
    assert main(["--db", url, "report", "pbt", "-o", "sub/none.html"]) == 1
    assert "cannot write the report to sub/none.html" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    assert main(["--db", url, "report", "pbt"]) == 1
    assert "pip install 'schedy[report]'" in capsys.readouterr().err


# -- in a real browser ------------------------------------------------------------------

#: Appended to a copy of the report: clicks the job table's headers and types in its
#: filter, then writes what the table showed into the DOM for --dump-dom to read.
TABLE_PROBE = """
<script>
window.addEventListener('load', function () {
  var head = document.querySelectorAll('#jobs thead th');
  var names = Array.prototype.map.call(head, function (th) { return th.textContent; });
  function column(name) {
    var at = names.indexOf(name);
    return Array.prototype.map.call(document.querySelectorAll('#jobs tbody tr'),
      function (tr) { return tr.cells[at].textContent; });
  }
  var seen = {initial: column('id')};
  head[names.indexOf('generation')].click();
  seen.ascending = column('generation');
  head[names.indexOf('generation')].click();
  seen.descending = column('generation');
  var filter = document.getElementById('jobs-filter');
  filter.value = seen.initial[1];
  filter.dispatchEvent(new Event('input'));
  seen.filtered = column('id');
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>
"""


def _chromium(page: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # root in CI containers
            "--enable-unsafe-swiftshader",  # software WebGL for parallel coordinates
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            *flags,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _errors(dom: str, log: str) -> list[str]:
    """What went wrong on the page: its own error box, and console errors."""
    box = re.search(r'<div id="report-errors"[^>]*>(.*?)</div>', dom, re.S)
    found = [box.group(1)] if box and box.group(1).strip() else []
    found += [
        line
        for line in log.splitlines()
        if "CONSOLE" in line
        and re.search(r"Uncaught|Refused|Error", line)
        and "GL Driver" not in line
    ]
    return found


def _plots(dom: str) -> dict[str, bool]:
    """Plot container id -> whether it holds plotly's rendered SVG."""
    found = {}
    for chunk in re.split(r'(?=<div class="plot[ "])', dom)[1:]:
        name = re.match(r'<div class="plot[^"]*" id="(plot-[^"]+)"', chunk)
        assert name, chunk[:200]
        found[name.group(1)] = 'class="main-svg"' in chunk.split("</section>")[0]
    return found


needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="no headless Chromium at /usr/bin/chromium (apt-get install -y chromium)",
)


@needs_chromium
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pbt", "random"])
def test_the_report_renders_in_chromium(db: schedy.SchedyDB, tmp_path: Path, kind: str) -> None:
    experiment = pbt_experiment(db) if kind == "pbt" else random_experiment(db)
    path = write_report(experiment, tmp_path / f"{kind}.html")
    expected = [f"plot-{figure['id']}" for figure in figures(report_data(experiment))]
    done = _chromium(path, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _errors(done.stdout, done.stderr) == []
    plots = _plots(done.stdout)
    assert list(plots) == expected and all(plots.values()), plots
    shot = tmp_path / f"{kind}.png"
    done = _chromium(path, tmp_path, f"--screenshot={shot}", "--window-size=1300,4000")
    assert done.returncode == 0 and shot.stat().st_size > 50_000  # a page, not a blank
    keep = os.environ.get("SCHEDY_REPORT_SCREENSHOTS")
    if keep:  # to look at: SCHEDY_REPORT_SCREENSHOTS=/tmp/shots pytest tests/test_report.py
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, keep)
        shutil.copy(path, keep)


@needs_chromium
@pytest.mark.slow
def test_the_job_table_sorts_and_filters(db: schedy.SchedyDB, tmp_path: Path) -> None:
    experiment = pbt_experiment(db)
    page = write_report(experiment, tmp_path / "r.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", TABLE_PROBE + "</body>"), encoding="utf-8")
    done = _chromium(probe, tmp_path, "--dump-dom")
    assert _errors(done.stdout, done.stderr) == []
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    jobs = list(experiment.all_jobs())
    best = sorted(jobs, key=lambda job: -job.results["acc"])
    assert seen["initial"] == [job.id for job in best]  # sorted by the score, best first
    generations = sorted(str(job.generation) for job in jobs)
    assert seen["ascending"] == sorted(seen["ascending"], key=int) and seen["ascending"]
    assert sorted(seen["ascending"], key=int) == sorted(generations, key=int)
    assert seen["descending"] == sorted(seen["ascending"], key=int, reverse=True)
    assert seen["filtered"] == [seen["initial"][1]]


@needs_chromium
@pytest.mark.slow
def test_a_request_from_the_page_would_be_blocked_and_shown(
    db: schedy.SchedyDB, tmp_path: Path
) -> None:
    # The guard the report relies on: its policy refuses any request, and says so.
    page = write_report(pbt_experiment(db), tmp_path / "r.html").read_text(encoding="utf-8")
    leaky = tmp_path / "leaky.html"
    leaky.write_text(
        page.replace("</body>", '<img src="https://example.com/x.png"></body>'), encoding="utf-8"
    )
    done = _chromium(leaky, tmp_path, "--dump-dom")
    assert any("blocked request: https://example.com/x.png" in e for e in _errors(done.stdout, ""))
