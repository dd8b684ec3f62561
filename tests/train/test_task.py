"""The task interface a training run drives: checkable in code, not a prose contract."""
import pytest

from fcnseg.train.classify import PatchClassificationTask
from fcnseg.train.segmentation import SegmentationTask
from fcnseg.train.task import Task, check_task


def test_both_tasks_implement_every_method_of_the_interface():
    for cls in (SegmentationTask, PatchClassificationTask):
        assert issubclass(cls, Task) and not cls.__abstractmethods__, cls


def test_an_incomplete_task_is_refused():
    class Half(Task):
        def __init__(self, settings, env, generator, log):
            self.model = None

    with pytest.raises(TypeError, match="abstract"):
        Half(None, None, None, print)

    class NoData(Task):
        __init__ = Half.__init__
        train_mode = step = validate = checkpoint_meta = check_resumable = summary = \
            final_report = lambda *a: None

    with pytest.raises(TypeError, match="NoData did not set train_ds"):
        check_task(NoData(None, None, None, print))
    with pytest.raises(TypeError, match="not a fcnseg.train.task.Task"):
        check_task(object())
