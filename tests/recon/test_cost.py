"""``tfmq-cost``: synthetic reconstruction samples, the growth figures, and (slow) a two-size measurement on the
DDPM CIFAR-10 architecture whose held captured data stays within the budget while its spilled data doubles."""

from __future__ import annotations

import pytest

from tfmq_exp.recon.cost import growth, main, synthetic_samples


def test_synthetic_samples_spread_evenly_with_equal_timesteps_contiguous() -> None:
    samples = synthetic_samples(10, [900, 500, 100], (3, 4, 4))
    assert samples.x.shape == (10, 3, 4, 4)
    assert samples.timesteps.tolist() == [900] * 4 + [500] * 3 + [100] * 3


def test_growth_is_the_relative_change_from_each_size_to_the_next() -> None:
    assert growth([{"m": 100.0}, {"m": 105.0}, {"m": 84.0}], "m") == pytest.approx([0.05, -0.2])


@pytest.mark.slow
def test_doubling_the_samples_doubles_the_spill_not_the_held_data(capsys: pytest.CaptureFixture[str]) -> None:
    results = main(["--samples", "16,32", "--units", "down_blocks.1.attentions.0", "--iters", "2",
                    "--budget-mb", "1", "--threads", "1"])  # fmt: skip
    small, large = results
    assert small["budget"]["peak_held_bytes"] <= 2**20 and large["budget"]["peak_held_bytes"] <= 2**20
    assert large["budget"]["peak_spilled_bytes"] == 2 * small["budget"]["peak_spilled_bytes"] > 0
    unit = large["units"]["down_blocks.1.attentions.0"]
    assert unit["bytes_per_sample"] == small["units"]["down_blocks.1.attentions.0"]["bytes_per_sample"] > 0
    assert unit["seconds_per_iter"] > 0 and large["peak_rss_mib"] > 0
    assert "peak_rss_growth_16_to_32" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--samples", "0,16"], ["--iters", "0"], ["--budget-mb", "-1"], ["--samples", "x"]])
def test_bad_arguments_stop_with_one_usage_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and "tfmq-cost: error:" in capsys.readouterr().err
