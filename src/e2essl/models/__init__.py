"""Networks: ResNet-15 (classifier and encoder), the pretraining projector, the GAN."""

from e2essl.models.projector import make_projector
from e2essl.models.resnet15 import ResNet15, ResNet15Config, count_parameters

__all__ = ["ResNet15", "ResNet15Config", "count_parameters", "make_projector"]
