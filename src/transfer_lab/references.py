"""Published accuracies to set beside the rows that reproduce their protocol.

A number is only comparable under the same protocol, so each entry names what must
match: the architecture and its weights, the input resolution, the features' layer and
pooling, the dataset source, the training-set size and the kind of classifier. A row
that matches none gets no reference rather than a misleading one. Each entry also says
which metric the number is (plain accuracy, or mean per-class accuracy, which the
comparison's ``balanced_accuracy`` columns hold), so it is read beside the right column.

Every number here is copied from the source it cites; an entry whose number could not be
read from that source is left out rather than recalled.
"""

from __future__ import annotations

from dataclasses import dataclass

METRICS = {"accuracy": "accuracy", "balanced_accuracy": "mean per-class accuracy"}
PENULTIMATE = "penultimate"


@dataclass(frozen=True)
class Protocol:
    """What a comparison row did, as far as a reference cares (from its metrics and the
    features' meta)."""

    arch: str
    source: str | None                    # the dataset's `source` in the config
    head_kind: str
    train_per_class: int | None           # None: the full training set
    weights: str | None = None            # None: not recorded
    input_size: int | None = None         # the side the network saw (its crop); None: not recorded
    layer: str | None = PENULTIMATE
    pool: str | None = None               # timm ViTs' `pool`; None: the model's own pooling


@dataclass(frozen=True)
class Reference:
    arch: str
    source: str                   # the dataset's `source` in the config
    head_kinds: tuple[str, ...]   # the classifiers the protocol used
    train_per_class: int | None   # None: the full training set
    split: str                    # the split the number is measured on
    low: float
    high: float
    citation: str
    metric: str = "accuracy"      # 'accuracy' or 'balanced_accuracy' (mean per-class accuracy)
    weights: tuple[str, ...] | None = None  # the config spellings of the weights used; None: any
    input_size: int | None = None  # the input side the protocol used; None: any
    layer: str | None = PENULTIMATE  # the features' layer; None: any
    pool: str | None = None       # the row's `pool` must equal this (None: unset, the model's own)

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {self.metric!r}")

    @property
    def column(self) -> str:
        """The comparison column the number stands beside (``test_balanced_accuracy``, ...)."""
        return f"{self.split}_{self.metric}"

    def describe(self) -> str:
        value = f"{100 * self.low:.1f}%" if self.low == self.high else f"{100 * self.low:.0f}–{100 * self.high:.0f}%"
        size = "full train" if self.train_per_class is None else f"{self.train_per_class}/class"
        return f"{value} {self.split} {METRICS[self.metric]} ({self.citation}, {size})"

    def matches(self, row: Protocol) -> bool:
        return (
            (self.arch, self.source, self.train_per_class) == (row.arch, row.source, row.train_per_class)
            and row.head_kind in self.head_kinds
            and (self.weights is None or row.weights in self.weights)
            and (self.input_size is None or row.input_size == self.input_size)
            and (self.layer is None or row.layer == self.layer)
            and row.pool == self.pool
        )


LAB = "lab forks"
CLIP = "CLIP paper linear probe"
# torchvision's ResNet-50 weights from before CLIP (January 2021): IMAGENET1K_V2 (torchvision
# 0.13, 2022) came later, and 'DEFAULT' now stands for it, so only V1 compares.
RESNET50_V1 = ("IMAGENET1K_V1",)
# VGG16's and Inception-v3's only ImageNet weights: 'DEFAULT' is IMAGENET1K_V1
# (tests/test_compare.py checks this against torchvision).
ONLY_V1 = ("IMAGENET1K_V1", "DEFAULT")

REFERENCES: tuple[Reference, ...] = (
    # The transfer-learning lab's feature-extraction exercise: one softmax layer on 100
    # training images per class; validation accuracy reported by forks of the lab (Keras
    # ImageNet weights; the lab's own input sizes and layers, so neither is constrained).
    Reference("vgg16", "cifar10", ("linear",), 100, "validation", 0.71, 0.76, LAB, weights=ONLY_V1, layer=None),
    Reference("inception_v3", "cifar10", ("linear",), 100, "validation", 0.65, 0.67, LAB, weights=ONLY_V1,
              layer=None),
    Reference("resnet50", "cifar10", ("linear",), 100, "validation", 0.73, 0.74, LAB, weights=RESNET50_V1,
              layer=None),
    Reference("vgg16", "traffic-pickle", ("linear",), 100, "validation", 0.87, 0.89, LAB, weights=ONLY_V1,
              layer=None),
    Reference("inception_v3", "traffic-pickle", ("linear",), 100, "validation", 0.74, 0.75, LAB, weights=ONLY_V1,
              layer=None),
    Reference("resnet50", "traffic-pickle", ("linear",), 100, "validation", 0.81, 0.81, LAB, weights=RESNET50_V1,
              layer=None),
    # Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
    # Supervision", Table 10: L-BFGS logistic regression on the penultimate features of an
    # ImageNet ResNet-50 at 224 px, C swept on validation, full training sets, official test
    # splits; plain accuracy on CIFAR-10 and GTSRB.
    # NOT RE-READ: these two values predate this file's sourcing rule and could not be checked
    # against a readable copy of Table 10 (see docs/evaluation.md, "Published references").
    Reference("resnet50", "cifar10", ("logreg",), None, "test", 0.918, 0.918, CLIP, weights=RESNET50_V1,
              input_size=224),
    Reference("resnet50", "gtsrb", ("logreg",), None, "test", 0.706, 0.706, CLIP, weights=RESNET50_V1,
              input_size=224),
)


def find_reference(row: Protocol) -> Reference | None:
    """The published number for this protocol, or None when there is none."""
    return next((ref for ref in REFERENCES if ref.matches(row)), None)


def reference_for(row: Protocol) -> str:
    """The published number for this protocol, described, or '' when there is none."""
    ref = find_reference(row)
    return ref.describe() if ref else ""
