"""The sweep report on hand-made run directories: what a reader relies on being there.

The main sweep: optimizer (sgd, adam) x lr (0.001, 0.01, 0.1) x 3 seeds, one lone
rmsprop run (a group of one), one failed run with a traceback, and one run whose
history.csv is corrupt. The report is built once per module (plots take ~1 s).

The browser tests render report.html in headless Chromium (scripts/install-test-tools
installs it): they look for a screenshot and for every <img> actually decoding.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hpcjobs.results import collect, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
# Finals per (optimizer, lr): mean of the three seeds is the middle value, std 0.02.
FINAL = {
    ("sgd", 0.001): 0.40,
    ("sgd", 0.01): 0.70,
    ("sgd", 0.1): 0.86,
    ("adam", 0.001): 0.92,
    ("adam", 0.01): 0.88,
    ("adam", 0.1): 0.30,
}
ERROR_MESSAGE = "loss became <NaN> at step 120 (lr=1 > max stable lr)"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/work/hpcjobs/job.py", line 88, in run\n'
    "    result = workload.train(cfg)\n"
    '  File "/work/hpcjobs/workloads/cnn/train.py", line 142, in train\n'
    "    raise FloatingPointError(message)\n"
    "FloatingPointError: loss became <NaN> at step 120"
)


def make_run(
    sweep: Path,
    task: int,
    overrides: list[str],
    metrics: dict,
    history: str | None = "auto",
    final: float = 0.5,
    accounting: dict | None = None,
) -> Path:
    """A run directory as the job leaves it: .hydra/overrides.yaml, metrics.json, history.csv
    (and accounting.json, as `status` records it for a Slurm task)."""
    run = sweep / str(task)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / ".hydra/config.yaml").write_text("experiment_name: demo\n")
    start = T0 + timedelta(seconds=30 * task)
    wall = 20.0 + task
    times = {
        "started_at": start.isoformat(),
        "finished_at": (start + timedelta(seconds=wall)).isoformat(),
        "wall_seconds": wall,
    }
    (run / "metrics.json").write_text(json.dumps({"schema_version": 1, **times, **metrics}))
    if history == "auto":
        history = history_csv(final, epochs=5)
    if history is not None:
        (run / "history.csv").write_text(history)
    if accounting is not None:
        (run / "accounting.json").write_text(
            json.dumps(
                {
                    "schema_version": 1,
                    "source": "sacct",
                    "attempts": [
                        {
                            "job_id": f"7_{task}",
                            "scheduler_state": "COMPLETED",
                            "elapsed_s": wall + 5,
                            **accounting,
                        }
                    ],
                }
            )
        )
    return run


def sacct_usage(peak_mb: float, cpu_s: float) -> dict:
    """What accounting says a task was given (32 GB, 4 CPUs, 1 GPU) and used."""
    return {
        "cpu_s": cpu_s,
        "max_rss_mb": peak_mb,
        "req_mem_mb": 32768.0,
        "cpus": 4,
        "gpus": 1,
        "node": "gpu01",
    }


def history_csv(final: float, epochs: int) -> str:
    rows = ["epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds"]
    for e in range(1, epochs + 1):
        acc = 0.1 + (final - 0.1) * e / epochs
        rows.append(
            f"{e},{2.3 * (1 - acc) + 0.05:.4f},{min(1.0, acc + 0.03):.4f},"
            f"{2.3 * (1 - acc):.4f},{acc:.4f},1.5"
        )
    return "\n".join(rows) + "\n"


def completed(acc: float, seed: int) -> dict:
    """A CNN run's metrics: validation 0.01 above test (configurations rank alike on both)."""
    return {
        "status": "completed",
        "seed": seed,
        "best_val_accuracy": acc + 0.01,
        "test_accuracy": acc,
        "test_f1": acc - 0.01,
        "test_loss": 2.3 * (1 - acc),
        "train_seconds": 15.0 + seed,
        "train_images_per_second": 1000.0 + 10 * seed,
        "cpu_seconds": 20.0,
        "max_rss_mb": 800.0,
        "cpus": 4,
        "max_gpu_mem_mb": 900.0,
        "gpus_used": 1,
    }


def failed(message: str, traceback: str | None = TRACEBACK) -> dict:
    out = {"status": "failed", "error_type": "FloatingPointError", "error_message": message}
    return {**out, "traceback": traceback} if traceback else out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = tmp_path_factory.mktemp("multirun") / "demo" / "2026-11-27_09-00-00"
    task = 0
    for (opt, lr), final in FINAL.items():
        for seed in range(3):
            acc = final + (seed - 1) * 0.02
            # Asked 32 GB, 4 CPUs; adam used up to 3.1 GB, sgd 2 GB; sgd keeps 1 CPU busy, adam 3.
            used = sacct_usage(
                3174.4 - 100 * seed if opt == "adam" else 2048.0,
                (75.0 if opt == "adam" else 25.0) * task,
            )
            make_run(
                sweep,
                task,
                [f"optimizer={opt}", f"optimizer.lr={lr}", f"seed={seed}"],
                completed(acc, seed),
                final=acc,
                accounting={**used, "cpu_s": (3.0 if opt == "adam" else 1.0) * (25.0 + task)},
            )
            task += 1
    make_run(
        sweep,
        task,
        ["optimizer=rmsprop", "optimizer.lr=0.01", "seed=0"],
        completed(0.55, 0),
        final=0.55,
    )
    make_run(
        sweep,
        task + 1,
        ["optimizer=adam", "optimizer.lr=1.0", "seed=0"],
        failed(ERROR_MESSAGE),
        history=None,
    )
    # The best group's last seed: its history.csv is garbled (a row with too many fields).
    make_run(
        sweep,
        task + 2,
        ["optimizer=adam", "optimizer.lr=0.001", "seed=3"],
        completed(0.92, 3),
        history="epoch,val_accuracy\n1,0.3\n2,0.4,0.5,0.6\n",
    )
    return sweep


@pytest.fixture(scope="module")
def built(
    sweep: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[collect.Collection, dict[str, Path]]:
    c = collect.collect([sweep])
    return c, report.write_report(c, tmp_path_factory.mktemp("report"))


# ---------------------------------------------------------------- helpers


class _Refs(HTMLParser):
    """Every URL-bearing attribute and every <img src> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.images: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if (
                name in ("src", "href", "srcset", "poster", "action", "data", "background")
                and value is not None
            ):
                self.urls.append((tag, name, value))
            if tag == "img" and name == "src" and value is not None:
                self.images.append(value)


def refs(page: str) -> _Refs:
    parser = _Refs()
    parser.feed(page)
    return parser


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has right after its signature."""
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def assert_sensible_png(data: bytes, what: str) -> None:
    width, height = png_size(data)
    assert len(data) > 5_000, f"{what}: {len(data)} bytes, suspiciously small for a plot"
    assert width >= 600 and height >= 200, f"{what}: {width}x{height} px"


# ---------------------------------------------------------------- content


def test_report_files_are_written_atomically(built):
    _, paths = built
    out = paths["html"].parent
    assert paths["markdown"] == out / "report.md" and paths["html"] == out / "report.html"
    assert {"learning_curves", "metric_vs_params", "throughput"} <= set(paths)
    assert all(p.is_file() for p in paths.values())
    assert not list(out.rglob("*.tmp")), "a temp file was left behind"


def test_html_names_the_best_configuration_and_how_clear_its_lead_is(built):
    c, paths = built
    page = paths["html"].read_text()
    assert c.best.loc[0, "best"] == "optimizer=adam optimizer.lr=0.001"
    assert "optimizer=adam optimizer.lr=0.001</strong>" in page
    assert "optimizer=adam optimizer.lr=0.01: 0.8800 ± 0.0200 (n=3)" in page  # the runner-up
    # Best adam/0.001 has a 4th seed (0.92): mean 0.92, std 0.0163; gap 0.04 vs pooled ~0.018.
    # Paired on the 3 seeds both ran: every seed 0.04 ahead.
    assert "test_accuracy +0.0400, paired on 3 shared seeds, 95% CI [0.0400, 0.0400]" in page
    assert "larger than the spread over seeds" in page


def test_the_report_says_what_it_selected_on_and_what_it_reports(built):
    _, paths = built
    md = paths["markdown"].read_text()
    assert "- **Ranking:** selected on best_val_accuracy (default), reported on test_accuracy" in md
    heading = "Selected on best_val_accuracy (default), reported on test_accuracy"
    assert f"{heading} (higher is better):" in md
    assert (
        "- **Best:** optimizer=adam optimizer.lr=0.001: 0.9200 ± 0.0163 (n=4), 95% CI [" in md
        and "]; best_val_accuracy 0.9300" in md
    )
    columns = (
        "| best_val_accuracy mean ± std | best_val_accuracy 95% CI | test_accuracy mean ± std |"
    )
    assert columns in md
    assert heading in paths["html"].read_text()


def test_a_ranking_on_test_asked_with_metric_is_named_and_called_out(sweep):
    best = report.best_section(collect.collect([sweep], metric="test_accuracy"))
    assert best is not None
    assert best["heading"] == "Selected on test_accuracy (--metric), reported on test_accuracy"
    assert best["caveat"].startswith("ranked on the test metric test_accuracy (as --metric asked)")
    assert best["best_side"]["selected"] == ""  # the selection is the reported metric: said once


def test_html_holds_the_summary_numbers_and_no_interval_for_a_single_run(built):
    _, paths = built
    page = paths["html"].read_text()
    for opt, lr, mean in (("sgd", 0.1, 0.86), ("sgd", 0.01, 0.70), ("adam", 0.1, 0.30)):
        assert f"{mean:.4f} ± 0.0200" in page, (opt, lr)
    # sgd/0.1 (0.84, 0.86, 0.88): t(0.975, 2) on the logit scale, mapped back.
    z = [math.log(p / (1 - p)) for p in (0.84, 0.86, 0.88)]
    mean, std = sum(z) / 3, math.sqrt(sum((x - sum(z) / 3) ** 2 for x in z) / 2)
    half = 4.302652729911275 * std / math.sqrt(3)
    low, high = (1 / (1 + math.exp(-(mean + d * half))) for d in (-1, 1))
    assert f"[{low:.4f}, {high:.4f}]" in page
    rmsprop = re.search(r"<td>rmsprop</td>.*?</tr>", page, re.S)
    assert rmsprop and "0.5500" in rmsprop.group(0) and "— (1 run)" in rmsprop.group(0)
    assert "[0.5500, 0.5500]" not in page  # never a zero-width interval for one run


def test_failed_run_shows_its_error_and_traceback_escaped(built):
    _, paths = built
    page = paths["html"].read_text()
    assert html.escape(f"FloatingPointError: {ERROR_MESSAGE}", quote=False) in page
    assert "<NaN>" not in page  # autoescaped: a message cannot inject markup
    pre = re.search(r"<details><summary>traceback.*?<pre>(.*?)</pre></details>", page, re.S)
    assert pre and html.unescape(pre.group(1)) == TRACEBACK  # whole: shorter than the tail limit
    assert "optimizer=adam optimizer.lr=1 seed=0" in page


def test_unreadable_history_is_listed_and_the_report_goes_on(built, sweep):
    _, paths = built
    page = paths["html"].read_text()
    assert str(sweep / "20" / "history.csv") in page
    assert "Top 6 of 7 configurations by mean best_val_accuracy" in page
    assert "1 run(s) without a readable history.csv left out" in page


def test_html_is_self_contained(built):
    _, paths = built
    parsed = refs(paths["html"].read_text())
    assert parsed.urls, "no links or images at all?"
    external = [
        (tag, attr, value[:60])
        for tag, attr, value in parsed.urls
        if not (value.startswith("data:") or value.startswith("#"))
    ]
    assert external == []
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert "url(" not in paths["html"].read_text()  # no CSS-loaded resources either


def test_embedded_and_markdown_plots_are_real_pngs(built):
    _, paths = built
    images = refs(paths["html"].read_text()).images
    assert len(images) == 3
    for i, src in enumerate(images):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert_sensible_png(base64.b64decode(src[len(prefix) :], validate=True), f"html image {i}")
    markdown = paths["markdown"].read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert linked == [
        "plots/learning_curves.png",
        "plots/metric_vs_params.png",
        "plots/throughput.png",
    ]
    for rel in linked:
        assert_sensible_png((paths["markdown"].parent / rel).read_bytes(), rel)


def test_markdown_has_the_tables_and_an_indented_traceback(built):
    _, paths = built
    md = paths["markdown"].read_text()
    assert "| adam | 0.001 | 4 | 0 | 0.9300 ± 0.0163 |" in md  # validation, then test beside it
    assert "| 0.9200 ± 0.0163 |" in md.split("| adam | 0.001 | 4 | 0 |", 1)[1].splitlines()[0]
    assert "| rmsprop | 0.01 | 1 | 0 | 0.5600 | — (1 run) | 0.5500 | — (1 run) |" in md
    assert "\n    FloatingPointError: loss became <NaN> at step 120\n" in md  # code block: verbatim
    # table cell: escaped
    assert "loss became &lt;NaN&gt; at step 120 (lr=1 &gt; max stable lr)" in md


def test_cost_and_sizing_shows_totals_the_least_efficient_and_a_right_sizing_hint(built):
    c, paths = built
    page = paths["html"].read_text()
    section = page[page.index('<h2 id="cost">') :]
    # The grid's 18 runs on Slurm; rmsprop and adam's 4th seed by their process; the failure not.
    assert (
        "Slurm accounting (sacct) for 18 run(s), their own process for 2; 1 without a measure"
        in section
    )
    assert (
        "asked 32 GB per task, used at most 3.1 GB (optimizer=adam optimizer.lr=0.001): "
        "<code>hydra.launcher.mem_gb=4</code> would fit" in section
    )
    table = re.search(r"<h3>Least efficient configurations.*?</table>", section, re.DOTALL).group(0)
    rows = re.findall(r"<tr><td>(optimizer=[^<]*)</td>", table)
    # rmsprop (20 s of CPU time in 38 s on 4 CPUs), then sgd (1 of 4 CPUs busy), then adam (3 of 4).
    assert rows[0] == "optimizer=rmsprop optimizer.lr=0.01" and all(
        r.startswith("optimizer=sgd") for r in rows[1:4]
    )
    assert '<td class="num">25%</td>' in table and "2.0 GB of 32 GB" in table
    runs = c.runs.set_index("task")
    assert (
        runs.loc[0, "cpu_efficiency"] == pytest.approx(0.25)
        and runs.loc[0, "usage_source"] == "sacct"
    )
    assert runs.loc[18, "usage_source"] == "process"
    sgd = c.summary[(c.summary["optimizer"] == "sgd") & (c.summary["optimizer.lr"] == 0.001)].iloc[
        0
    ]
    # its three runs (tasks 0-2), one GPU each
    assert sgd["gpu_hours"] == pytest.approx((25 + 26 + 27) / 3600)
    md = paths["markdown"].read_text()
    assert "## Cost and sizing" in md and "> asked 32 GB per task, used at most 3.1 GB" in md
    assert "`hydra.launcher.mem_gb=4` would fit" in md


def test_the_report_header_shows_the_code_each_submission_ran(tmp_path):
    sweep = tmp_path / "demo" / "2026-11-27_09-00-00"
    make_run(sweep, 0, ["seed=0"], completed(0.5, 0))
    from hpcjobs.sweepdir import manifest

    entry = {
        "id": "abc",
        "python": "3.11.7",
        "packages": {"torch": "2.5.1", "hydra-core": "1.3.2"},
        "cuda": "12.4",
        "snapshot": ".submitit/code.abc",
        "checkouts": [
            {
                "role": "project",
                "path": "/home/u/proj",
                "commit": "0123456789abcdef",
                "dirty": True,
                "patch": "code/abc/project.patch",
            }
        ],
    }
    manifest.write(
        manifest.SweepManifest(
            "demo",
            str(sweep),
            "slurm",
            provenance=[entry],
            tasks=[manifest.TaskRecord(0, ["seed=0"], "0", "h", "7_0")],
        )
    )
    page = report.write_report(collect.collect([sweep], record_accounting=False), tmp_path / "out")[
        "html"
    ].read_text()
    assert (
        "project: 0123456789ab, uncommitted changes in code/abc/project.patch (/home/u/proj)"
        in page
    )
    assert "taken: the tasks imported .submitit/code.abc" in page
    assert "Python 3.11.7, torch 2.5.1 (CUDA 12.4), hydra-core 1.3.2" in page


def test_sweep_where_every_run_failed_still_reports_its_failures(tmp_path):
    sweep = tmp_path / "all_failed"
    make_run(sweep, 0, ["optimizer=sgd", "seed=0"], failed("CUDA out of memory"), history=None)
    make_run(
        sweep,
        1,
        ["optimizer=adam", "seed=0"],
        failed("no such file: /data/train", traceback=None),
        history=None,
    )
    paths = report.write_report(collect.collect([sweep]), tmp_path / "out")
    page = paths["html"].read_text()
    assert set(paths) == {"markdown", "html"}  # no metric to plot
    assert "<img" not in page
    assert "CUDA out of memory" in page and "no such file: /data/train" in page
    assert "2 run(s) did not complete" in page and "No failures" not in page
    assert "no best configuration" in page
    assert "2 failed" in paths["markdown"].read_text()


def test_single_run_without_overrides_or_history(tmp_path):
    sweep = tmp_path / "one"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text(json.dumps(completed(0.8, 0)))
    paths = report.write_report(collect.collect([sweep]), tmp_path / "out")
    page = paths["html"].read_text()
    assert "<strong>all runs</strong>: 0.8000 (1 run)" in page
    assert "No learning curves: no completed run has a readable history.csv." in page
    assert "No swept hyperparameter" in page
    assert "No failures" in page
    assert "Problems" not in page  # a workload without epochs is not a problem


def test_several_sweeps_are_told_apart(tmp_path):
    dirs = []
    for name, shift in (("a", 0.0), ("b", 0.1)):
        sweep = tmp_path / name / "2026-11-27_09-00-00"
        for seed in range(2):
            make_run(
                sweep,
                seed,
                [f"optimizer.lr={0.01 * (seed + 1)}", f"seed={seed}"],
                completed(0.6 + shift + 0.01 * seed, seed),
            )
        dirs.append(sweep)
    c = collect.collect(dirs)
    assert c.group_keys[0] == "sweep"
    paths = report.write_report(c, tmp_path / "out")
    page = paths["html"].read_text()
    assert "Sweep a/2026-11-27_09-00-00" in page and "Sweep b/2026-11-27_09-00-00" in page
    assert "sweep=b/2026-11-27_09-00-00" in page


def test_rewriting_a_report_drops_plots_it_no_longer_draws(built, tmp_path):
    out = tmp_path / "out"
    c, _ = built
    report.write_report(c, out)
    assert (out / "plots" / "throughput.png").exists()
    sweep = tmp_path / "failed"
    make_run(sweep, 0, ["seed=0"], failed("boom"), history=None)
    report.write_report(collect.collect([sweep]), out)
    assert not list((out / "plots").glob("*.png"))


def test_number_formats():
    assert report.fmt(0.967901) == "0.9679"
    assert report.fmt(11283.65) == "11,284"
    assert report.fmt(math.nan) == "—"
    assert report.mean_pm_std(11332.0, 99.55) == "11,332 ± 100"
    assert report.ci_text(0.5, math.nan, math.nan, 1) == "— (1 run)"


# ---------------------------------------------------------------- in a real browser


def chromium_or_skip() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} missing under CI=true: run scripts/install-test-tools")
    pytest.skip(
        f"{CHROMIUM} missing: run scripts/install-test-tools (as root) to enable the browser tests"
    )


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    cmd = [
        str(chromium_or_skip()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def title_after_load(tmp_path: Path, html: Path, script: str) -> str:
    """The page's title once ``script`` (it sets document.title to what it measured) ran on load."""
    probe = tmp_path / "probe.html"
    hook = f"<script>window.addEventListener('load', () => {{ {script} }});</script>"
    probe.write_text(html.read_text().replace("</body>", hook + "</body>"))
    proc = run_chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", probe.as_uri())
    title = re.search(r"<title>(.*?)</title>", proc.stdout, re.DOTALL)
    assert title, f"no DOM dumped; chromium said:\n{proc.stderr[-2000:]}"
    return title.group(1)


def test_report_renders_in_a_headless_browser(built, tmp_path):
    _, paths = built
    shot = tmp_path / "shot.png"
    proc = run_chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--hide-scrollbars",
        "--window-size=1280,4000",
        paths["html"].resolve().as_uri(),
    )
    assert shot.is_file(), f"no screenshot; chromium said:\n{proc.stderr[-2000:]}"
    data = shot.read_bytes()
    assert png_size(data) == (1280, 4000)
    assert len(data) > 50_000  # a blank page compresses to a few KB


def test_every_image_loads_in_a_headless_browser(built, tmp_path):
    _, paths = built
    script = (
        "const imgs = [...document.images];"
        " const broken = imgs.filter(i => i.naturalWidth === 0).length;"
        " document.title = 'broken:' + broken + ' of:' + imgs.length;"
    )
    assert title_after_load(tmp_path, paths["html"], script) == "broken:0 of:3"


def test_cost_section_renders_in_a_headless_browser(built, tmp_path):
    """The cost section lays out: its heading, facts, hint and table have a size on the page."""
    _, paths = built
    script = (
        "const h = document.getElementById('cost'); let el = h, parts = [];"
        " while ((el = el.nextElementSibling) && el.tagName !== 'H2') parts.push(el);"
        " const tall = parts.filter(p => p.getBoundingClientRect().height > 10)"
        ".map(p => p.tagName.toLowerCase());"
        " const rows = parts.flatMap(p => [...p.querySelectorAll('tbody tr')]).length;"
        " const hint = parts.find(p => p.classList.contains('hint'));"
        " document.title = 'cost:' + Math.round(h.getBoundingClientRect().height > 0)"
        " + ' parts:' + tall.join(',')"
        " + ' rows:' + rows + ' hint:' + (hint ? getComputedStyle(hint).borderLeftStyle : 'none');"
    )
    assert (
        title_after_load(tmp_path, paths["html"], script)
        == "cost:1 parts:dl,p,h3,div,p rows:5 hint:solid"
    )
    # The section alone, screenshot: a page of text and table, not a blank one.
    page = paths["html"].read_text()
    alone = tmp_path / "cost.html"
    alone.write_text(
        page[: page.index("<body>") + 6]
        + page[page.index('<h2 id="cost">') : page.index('<h2 id="problems">')]
        + "</body></html>"
    )
    shot = tmp_path / "cost.png"
    proc = run_chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1280,700",
        "--hide-scrollbars",
        alone.as_uri(),
    )
    assert shot.is_file(), f"no screenshot; chromium said:\n{proc.stderr[-2000:]}"
    assert png_size(shot.read_bytes()) == (1280, 700) and len(shot.read_bytes()) > 20_000
