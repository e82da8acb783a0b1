"""Online DPO's data rules (training.online): which pairs the ensemble labels, and the mix."""

from __future__ import annotations

import pytest

from training.online import mix_by_share, pair_verdicts


def test_the_ensemble_labels_a_pair_only_where_its_bounds_agree():
    members = [
        # pair 0: both say the first is 2 better; pair 1: +1 and -1 (unsure); pair 2: both prefer the second
        [3.0, 1.0, 1.0, 0.0, 0.0, 2.0],
        [2.0, 0.0, 0.0, 1.0, 0.0, 3.0],
    ]
    verdicts = pair_verdicts(members)
    assert [v for v, _ in verdicts] == [1, 0, -1]
    assert verdicts[0][1] == pytest.approx(0.0) and verdicts[1][1] == pytest.approx(1.0)  # variance of gaps
    assert [v for v, _ in pair_verdicts([[1.0, 1.0]])] == [0]  # equal scores: unsure
    with pytest.raises(ValueError):
        pair_verdicts([[1.0, 2.0, 3.0]])


def test_people_s_share_is_kept_by_dropping_only_from_the_larger_side():
    human, machine = list(range(10)), [f"m{i}" for i in range(30)]
    h, m = mix_by_share(human, machine, 0.5)
    assert (len(h), len(m)) == (10, 10) and set(m) <= set(machine)
    h, m = mix_by_share(human, machine, 0.75)
    assert (len(h), len(m)) == (10, 3)
    h, m = mix_by_share(human, machine[:2], 0.5)
    assert (len(h), len(m)) == (2, 2)
    assert mix_by_share(human, machine, 0.0) == ([], machine)
    assert mix_by_share(human, machine, 1.0) == (human, [])
    assert mix_by_share([], machine, 0.5) == ([], machine)  # nothing to balance against
    assert mix_by_share(human, machine, 0.5, seed=3) == mix_by_share(human, machine, 0.5, seed=3)
    with pytest.raises(ValueError):
        mix_by_share(human, machine, 1.5)
