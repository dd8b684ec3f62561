"""EfficientNet-B0 (Tan & Le 2019): torchvision's builder; width_mult resizes every layer
(width.py). Its squeeze-excitation blocks average over the whole feature map inside the
body: densify turns each into a box average of that stage's patch map (dilated), so the
dense network stays exact.
"""
import torchvision.models as tvm

from .resnet import torchvision_builder

torchvision_builder("efficientnet_b0", tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1)
