"""Live TensorBoard logs of a run: `--tensorboard`, then `tensorboard --logdir runs`.

A trainer callback that forwards what the trainer already logs to metrics.jsonl, plus a few
images (a batch as the model sees it, the first-layer filters after each epoch). It reads
only, draws no random numbers and works off the clock, so a run trains the same with it on.
"""

from __future__ import annotations

from torchvision.utils import make_grid

from ..engine.distributed import is_writer
from .model_parts import first_layer_filters

# metrics.jsonl key → TensorBoard tag, per kind of record (a `stopped` record has none)
_WINDOW_TAGS = {"train_loss": "train_window/loss", "train_acc": "train_window/accuracy", "lr": "lr",
                "images_per_s": "throughput/images_per_s", "unlabelled_loss": "train_window/unlabelled_loss",
                "mask_rate": "train_window/mask_rate"}  # fmt: skip
_EPOCH_TAGS = {"train_loss": "epoch/train_loss", "train_acc": "epoch/train_accuracy", "val_loss": "epoch/val_loss",
               "val_acc": "epoch/val_accuracy", "held_out_pgd_acc": "epoch/held_out_pgd_accuracy"}  # fmt: skip
_TEST_TAGS = {"accuracy": "test/accuracy", "loss": "test/loss"}


class TensorBoardLogger:
    """Writes RUN_DIR/tensorboard/ from the writing process only (rank 0 of a distributed run).

    On resume, events at or after the restored step are purged (as metrics.jsonl is truncated
    to the checkpoint), so the curves show each step once.
    """

    def __init__(self):
        self.writer = None

    def on_fit_start(self, trainer) -> None:
        if not is_writer():
            return
        from torch.utils.tensorboard import SummaryWriter

        with trainer.untimed():
            self.writer = SummaryWriter(trainer.run_dir / "tensorboard", purge_step=trainer.step or None)
            if trainer.step == 0:
                x = next(trainer.train_loader.epoch(0))[0]  # the first (labelled) batch, augmented, as the model sees it
                loader = trainer.train_loader
                images = x[:32].float() * loader.std.view(1, -1, 1, 1) + loader.mean.view(1, -1, 1, 1)
                self.writer.add_images("inputs/first_training_batch", images.clamp(0, 1).cpu(), 0)

    def on_log(self, trainer, record: dict) -> None:
        if self.writer is None:
            return
        tags = {"test": _TEST_TAGS, "step": _WINDOW_TAGS, "epoch": _EPOCH_TAGS}.get(record["kind"], {})
        with trainer.untimed():
            for key, tag in tags.items():
                if key in record:
                    self.writer.add_scalar(tag, record[key], record.get("step", trainer.step))
            if record["kind"] == "test":
                self.writer.close()  # the test result is the run's last record

    def on_epoch_end(self, trainer) -> None:
        if self.writer is None:
            return
        with trainer.untimed():
            filters = first_layer_filters(trainer.eval_model)
            if filters is not None:  # one grid, enlarged 8× without smoothing: a filter is a few pixels
                grid = make_grid(filters[:64], nrow=16, padding=1, pad_value=1.0).repeat_interleave(8, 1)
                self.writer.add_image("model/first_layer_filters", grid.repeat_interleave(8, 2), trainer.step)
            self.writer.flush()
