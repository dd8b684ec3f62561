"""Batches for training and validation: collation, and the seeds that make a run's batch
order and augmentation depend only on the seed, the epoch and the step (so a resumed run
sees the batches of an uninterrupted one)."""
from __future__ import annotations

import torch

from fcnseg.train.errors import TrainingError

WORKERS_PER_GPU = 4  # num_workers=auto on a GPU: enough decoding to keep one GPU fed


def worker_count(num_workers, device):
    """trainer.num_workers: an integer as it is; auto: 0 on the CPU (loader processes would
    compete with the step for the same cores), WORKERS_PER_GPU for this process's GPU."""
    if num_workers != "auto":
        return int(num_workers)
    return WORKERS_PER_GPU if torch.device(device).type == "cuda" else 0


def epoch_seed(seed, epoch):
    """The seed of one epoch: batch order, augmentation and per-step pixel draws start from it."""
    return seed * 100_003 + epoch


def seed_transform(dataset, seed):
    """Reseed the dataset's augmentation pipeline (albumentations' Compose), if it has one."""
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed % 2**32)


def seed_worker(worker_id):
    """DataLoader worker_init_fn: each worker gets its own augmentation stream (copies of the
    pipeline would otherwise repeat the same draws)."""
    seed_transform(torch.utils.data.get_worker_info().dataset, torch.initial_seed())


def collate_images(batch):
    """Image samples -> {"image": (N, C, H, W), "mask": (N, H, W), "name": [...]}; images of
    one batch must share their size."""
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) > 1:
        names = ", ".join(b["name"] for b in batch)
        raise TrainingError(f"images of one batch differ in size {sorted(shapes)} ({names}); "
                            f"add a crop to the augmentation or train with batch size 1",
                            fixes=["aug=scale_crop", "trainer.batch_size=1 trainer.val_batch_size=1"])
    return {"image": torch.stack([b["image"] for b in batch]),
            "mask": torch.stack([b["mask"] for b in batch]),
            "name": [b["name"] for b in batch]}


def collate_patches(batch):
    """Labelled patches -> {"image": (N, C, P, Q), "mask": (N,), "name": [...]}: a patch's
    label stands as its "mask" (the label of its centre pixel), so the segmentation
    evaluation counts patches as it counts pixels."""
    return {"image": torch.stack([b["image"] for b in batch]),
            "mask": torch.stack([b["label"] for b in batch]),
            "name": [b["name"] for b in batch]}
