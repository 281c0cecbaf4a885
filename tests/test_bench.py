"""make bench's statistics: the paired loop/bare ratio and the table it writes."""

from __future__ import annotations

from e2essl.bench import loop_against_bare, render


def test_paired_ratio_is_the_median_over_steps_and_skips_the_warm_up():
    calls = []

    def bare() -> float:
        calls.append("bare")
        return 1.0

    def real(r: int) -> float:
        calls.append(f"real{r}")
        # Warm-up rounds 0 and 1 are slow and must not count; one later outlier must not move the median.
        return 10.0 if r < 2 else (4.0 if r == 5 else 1.25)

    out = loop_against_bare(bare, real, rounds=7)
    assert out["rounds"] == 7 and len(calls) == 2 * (7 + 2)
    assert calls[:4] == ["bare", "real0", "real1", "bare"]  # which goes first alternates
    assert out["ratio"] == 0.8
    assert out["ratio_range"] == [0.25, 0.8]
    assert out["ratio_of_best_times"] == 0.8
    assert out["loop_jets_per_s"] == 1 / 1.25 and out["bare_jets_per_s"] == 1.0


def test_the_table_quotes_the_loop_ratios_with_their_spread_and_the_control():
    loop = {
        "ratio": 0.963,
        "ratio_quartiles": [0.94, 0.99],
        "rounds": 200,
        "loop_jets_per_s": 782.0,
        "bare_jets_per_s": 813.0,
        "ratio_of_best_times": 0.962,
        "loop_overhead_ms": 2.7,
        "overhead_share": 0.032,
        "bare_step_ms": 84.0,
        "control_ratio": 1.004,
        "control_quartiles": [0.98, 1.02],
    }
    table = render({"machine": "test", "date": "today", "supervised": loop})
    row = next(line for line in table.splitlines() if line.startswith("| supervised loop"))
    assert "**0.96**, median of 200 paired steps (quartiles 0.94-0.99)" in row
    assert "2.7 ms per step, 3.2 % of the 84 ms bare step" in row and row.endswith(">= 0.95 |")
    assert "| control: bare step / the same bare step" in table and "**1.00** (quartiles 0.98-1.02)" in table
