"""study-validate: which trials it retrains, the rank correlation it stores, and what the report makes of it."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
from test_studies import FAST_TIMING, _config, _psnr_study

from cli import main
from studies.ranking import LongRun, attr_key, rank_agreement, read_validation
from studies.report import write_study_report
from studies.runner import StudyRun, run_study
from studies.validate import choose_trials


def _long(trial: int, short: float, long: float | None, baseline: bool = False, factor: float = 10.0) -> LongRun:
    return LongRun(trial=trial, factor=factor, variant=f"v{trial}", seed=trial, short_psnr=short, long_psnr=long,
                   long_ssim=None if long is None else 0.5, short_images=400, long_images=4000, steps=1000,
                   train_seconds=40.0, budget_seconds=40.0, budget_steps=None, baseline=baseline)


def _store(study: optuna.Study, runs: list[LongRun]) -> None:
    for run in runs:
        study.set_user_attr(attr_key(run.factor, run.trial), run.to_dict())


def test_kendall_and_spearman_against_hand_counts():
    """Short 1 < 2 < 3 < 4; long swaps the last two: 5 concordant pairs, 1 discordant -> tau 4/6; rho 0.8."""
    runs = [_long(i, short, long) for i, (short, long) in enumerate([(1, 1), (2, 2), (3, 4), (4, 3)])]
    tau, tau_p, rho, rho_p = rank_agreement(runs)
    assert tau == pytest.approx(4 / 6) and rho == pytest.approx(0.8)
    assert 0 < tau_p <= 1 and 0 < rho_p <= 1
    assert rank_agreement(runs[:2]) == (None, None, None, None)  # too few
    assert rank_agreement([_long(i, 5.0, float(i)) for i in range(4)])[0] is None  # short all tied: no order
    failed = [*runs, _long(9, 9.0, None)]  # a failed long run is left out, not ranked last
    assert rank_agreement(failed)[0] == pytest.approx(4 / 6)


def test_the_baseline_the_front_and_random_trials_are_chosen(tmp_path):
    storage = f"sqlite:///{tmp_path}/choose.db"
    # the fixture's speed rises with the trial number: trial 9, the fastest and the best PSNR, alone is the front
    study = _psnr_study(storage, "c", [15.0, 16.0, 14.0, 13.0, 12.0, 11.0, 10.0, 9.0, 8.0, 17.0],
                        extra={1: {"baseline_repeat": 1}})  # trial 1: the baseline again, never chosen
    chosen = [t.number for t in choose_trials(study, n_trials=5, seed=0)]
    assert len(chosen) == 5 and chosen == sorted(chosen) and {0, 9} <= set(chosen) and 1 not in chosen
    draws = {tuple(t.number for t in choose_trials(study, n_trials=5, seed=k)) for k in range(6)}
    assert tuple(chosen) in draws and len(draws) > 1  # seeded: the same seed, the same draw; others differ
    assert [t.number for t in choose_trials(study, n_trials=50)] == [0, *range(2, 10)]  # every trial when fewer
    few = [t.number for t in choose_trials(study, n_trials=3)]  # the cap holds: baseline, front, one random
    assert len(few) == 3 and {0, 9} <= set(few)
    # a front larger than the places: the highest PSNR of it first, a quarter of the places stay random
    study = _psnr_study(storage, "wide", [15.0, 24.0, 23.0, 22.0, 21.0, 20.0, 19.0, 18.0, 17.0, 16.0])
    assert {t.number for t in study.best_trials} == set(range(1, 10))  # PSNR falls as speed rises: all on it
    chosen = {t.number for t in choose_trials(study, n_trials=8)}
    assert {0, 1, 2, 3, 4, 5} <= chosen and len(chosen - {0, 1, 2, 3, 4, 5}) == 2  # 8 - baseline - 2 random


def test_a_study_without_a_recorded_config_or_enough_trials_is_one_line(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/bad.db"
    _psnr_study(storage, "v", [16.0, 17.0, 18.0])
    assert main(["study-validate", storage, "--study", "v"]) == 1
    assert capsys.readouterr().err.strip() == ("Error: study 'v' recorded no config: pass --config with its study "
                                               "TOML")
    assert main(["study-validate", storage, "--study", "v", "--trials", "2"]) == 1
    assert "trials=2 is not valid: use 3 or more" in capsys.readouterr().err
    assert main(["study-validate", storage, "--study", "nope"]) == 1
    assert "study 'nope' is not in" in capsys.readouterr().err


def test_report_names_no_winner_when_long_training_reorders_the_trials(tmp_path):
    storage = f"sqlite:///{tmp_path}/v.db"
    psnrs = [16.0, 17.0, 18.0, 19.0, 20.0]
    study = _psnr_study(storage, "v", psnrs)
    write_study_report(storage, "v", tmp_path / "none")
    assert "The ranking is not checked against longer training yet" in (tmp_path / "none" / "report.md").read_text()

    # long training reverses the order: tau -1
    _store(study, [_long(i, p, 30.0 - p, baseline=i == 0) for i, p in enumerate(psnrs)])
    written = write_study_report(storage, "v", tmp_path / "r")
    text = (tmp_path / "r" / "report.md").read_text()
    first = text.split("## Answer", 1)[1].strip().split("\n", 1)[0]
    assert first.startswith("The budget is too short to rank these generators: retrained for 10x the budget, the 5 "
                            "validated trials rank with Kendall's tau -1.00")
    assert "`v0` (trial 0) reached the highest PSNR, 14.00 dB" in first
    assert "Best quality:" not in text and "On the front" not in text
    section = text.split("## Does a short trial rank like a long one?", 1)[1].split("\n## ", 1)[0]
    assert "does not rank these generators like the long one (the goal is tau >= 0.6)" in section
    assert "| 0       | v0        | baseline |" in section
    plot = tmp_path / "r" / "validation.png"
    assert plot in written and plot.stat().st_size > 10_000
    with open(tmp_path / "r" / "validation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["trial"], r["short_rank"], r["long_rank"]) for r in rows][:2] == [("0", "5.0", "1.0"),
                                                                                 ("1", "4.0", "2.0")]

    # the same order after long training: the answer names its winner and says the order holds
    study = _psnr_study(storage, "w", psnrs)
    _store(study, [_long(i, p, p + 3.0, baseline=i == 0) for i, p in enumerate(psnrs)])
    write_study_report(storage, "w", tmp_path / "w")
    text = (tmp_path / "w" / "report.md").read_text()
    assert "Best quality: `v4` (trial 4)" in text
    assert "The order holds at 10x the budget: the 5 retrained trials rank with Kendall's tau 1.00" in text
    assert read_validation(study).ranks_hold is True


def test_study_validate_retrains_with_the_trials_seeds_and_resumes(tmp_path, sample_dataset, capsys):
    """A real 3-trial study (6 steps each), validated at 2x: 12 steps each, its seeds; a second call trains none."""
    storage = f"sqlite:///{tmp_path}/real.db"
    config = _config(tmp_path, sample_dataset, objectives='["val_psnr"]', pruner="none",
                     budget=f"steps = 6\neval_every = 6\n{FAST_TIMING}")
    Path(config).write_text('description = "A smoke test, not an answer."\n' + Path(config).read_text())
    run_study(StudyRun(config_path=config, storage=storage, n_trials=3, out_root=str(tmp_path / "trials")))
    args = ["study-validate", storage, "--study", "t", "--factor", "2", "--trials", "3", "--out",
            str(tmp_path / "long"), "-q"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "3 to train for 12 steps each (2x the study's budget)" in err and "Kendall's tau" in err
    own = (tmp_path / "long" / "validation.md").read_text()  # the command writes its section, table and plot too
    assert "## Does a short trial rank like a long one?" in own and "![validation](validation.png)" in own
    assert (tmp_path / "long" / "validation.png").stat().st_size > 10_000
    assert len((tmp_path / "long" / "validation.csv").read_text().splitlines()) == 4
    study = optuna.load_study(study_name="t", storage=storage)
    runs = read_validation(study, 2.0).runs
    trials = {t.number: t for t in study.trials}
    assert len(runs) == 3
    for run in runs:
        assert run.steps == 12 and run.budget_steps == 12 and run.seed == trials[run.trial].user_attrs["seed"]
        assert run.short_psnr == pytest.approx(trials[run.trial].user_attrs["val_psnr"])
        assert run.long_psnr is not None and run.long_psnr > 0
        assert (Path(run.out) / "metrics.csv").is_file()
    assert main(args) == 0
    assert "0 to train" in capsys.readouterr().err  # stored runs are kept, not trained again
    write_study_report(storage, "t", tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.startswith("# Study `t`\n\n> A smoke test, not an answer.\n")  # the config's description
    assert "## Does a short trial rank like a long one?" in text and "for 2x the study's budget (12 steps)" in text

    assert main(["study-validate", storage, "--study", "t", "--factor", "1"]) == 1
    assert capsys.readouterr().err.strip() == ("Error: factor=1.0 is not valid: use a number > 1 (times the "
                                               "study's budget)")
    changed = Path(config).read_text().replace("d_features = 8", "d_features = 16")
    other = tmp_path / "changed.toml"
    other.write_text(changed)
    assert main(["study-validate", storage, "--study", "t", "--config", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: config '{other}' is not the one study 't' ran with")
    assert len(read_validation(optuna.load_study(study_name="t", storage=storage), 2.0).runs) == 3  # nothing lost

