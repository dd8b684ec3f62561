"""The error of a training run that cannot go on."""


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged loss, a step that cannot fit, a missing checkpoint).

    fixes: settings assignments that would make it work ("trainer.output_stride=4"), by the
    settings' dotted names; continue_in: the run directory whose last.pt resumes the run.
    A command line front end turns both into its own syntax."""

    def __init__(self, message, fixes=(), continue_in=None):
        super().__init__(message)
        self.fixes, self.continue_in = list(fixes), continue_in
