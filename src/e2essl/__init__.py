"""e2essl: self-supervised pretraining (Barlow Twins, VICReg) of ResNet-15 on CMS end-to-end jet images.

Kept light on purpose: importing the package imports neither torch nor mlflow.
"""

__version__ = "0.1.0"
