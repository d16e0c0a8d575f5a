"""Published accuracies to set beside the rows that reproduce their protocol.

A number is only comparable under the same protocol, so each entry names what must
match: the architecture, the dataset source, the training-set size and the kind of
classifier. Rows that match none get no reference rather than a misleading one.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def describe(self) -> str:
        value = f"{100 * self.low:.1f}%" if self.low == self.high else f"{100 * self.low:.0f}–{100 * self.high:.0f}%"
        size = "full train" if self.train_per_class is None else f"{self.train_per_class}/class"
        return f"{value} {self.split} ({self.citation}, {size})"


LAB = "lab forks"
CLIP = "CLIP paper linear probe"
REFERENCES: tuple[Reference, ...] = (
    # The transfer-learning lab's feature-extraction exercise: one softmax layer on 100
    # training images per class; validation accuracy reported by forks of the lab.
    Reference("vgg16", "cifar10", ("linear",), 100, "validation", 0.71, 0.76, LAB),
    Reference("inception_v3", "cifar10", ("linear",), 100, "validation", 0.65, 0.67, LAB),
    Reference("resnet50", "cifar10", ("linear",), 100, "validation", 0.73, 0.74, LAB),
    Reference("vgg16", "traffic-pickle", ("linear",), 100, "validation", 0.87, 0.89, LAB),
    Reference("inception_v3", "traffic-pickle", ("linear",), 100, "validation", 0.74, 0.75, LAB),
    Reference("resnet50", "traffic-pickle", ("linear",), 100, "validation", 0.81, 0.81, LAB),
    # Radford et al. 2021, Table 10: L-BFGS logistic regression on ImageNet ResNet-50
    # features, C swept on validation, full training sets, official test splits.
    Reference("resnet50", "cifar10", ("logreg",), None, "test", 0.918, 0.918, CLIP),
    Reference("resnet50", "gtsrb", ("logreg",), None, "test", 0.706, 0.706, CLIP),
)


def reference_for(arch: str, source: str | None, head_kind: str, train_per_class: int | None) -> str:
    """The published number for this protocol, described, or '' when there is none."""
    for ref in REFERENCES:
        if (ref.arch, ref.source, ref.train_per_class) == (arch, source, train_per_class) \
                and head_kind in ref.head_kinds:
            return ref.describe()
    return ""
