"""Augmentation settings -> the albumentations pipeline; the model comes from
fcnseg.models, the optimiser and its schedule from fcnseg.train.schedule.
"""


def build_transform(aug_cfg):
    """{"transforms": [{"name": "HorizontalFlip", "p": 0.5}, ...]} -> albumentations.Compose
    applied jointly to the uint8 image and its mask (None when the list is empty)."""
    import albumentations as A
    items = (aug_cfg or {}).get("transforms") or []
    ts = []
    for item in items:
        item = dict(item)
        name = item.pop("name")
        cls = getattr(A, name, None)
        if cls is None or not isinstance(cls, type):
            raise ValueError(f"aug: albumentations has no transform {name!r}")
        ts.append(cls(**item))
    return A.Compose(ts) if ts else None
