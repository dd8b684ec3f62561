"""The cost of a training step before it runs, and the memory check with the settings that
fit (fcnseg.train.cost)."""
import pytest

import fcnseg.train
from fcnseg.train.cost import duration

from helpers import compose, tiny_overrides


def test_a_step_that_cannot_fit_is_refused_with_settings_that_fit(scenes, tmp_path):
    # patchnet at width 0.25 on 3 images of 32x32 at stride 1: about 16 MiB; allow 8
    with pytest.raises(fcnseg.train.TrainingError, match="one training step needs") as info:
        fcnseg.train.run(compose(tiny_overrides(scenes, "trainer.memory_limit_mb=8",
                                                "trainer.output_stride=1")), tmp_path)
    assert any(f.startswith(("trainer.output_stride=", "trainer.batch_size="))
               for f in info.value.fixes), info.value.fixes
    assert not (tmp_path / "last.pt").exists()


def test_durations_read_as_a_person_says_them():
    assert duration(0.4214) == "0.42 s" and duration(210) == "3.5 min"
