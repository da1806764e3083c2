"""XraySegInferLib: bone segmentation of radiographs (X-ray images). Qt-free, Slicer-free core.

* ``dataset``   datasets in our nnU-Net v2 raw layout (the exporter's output), split by CT
* ``networks``  MONAI 2D U-Nets, multi-class (softmax) or multi-label (sigmoid per class)
* ``training``  training with radiograph augmentation, checkpoints and resume, CPU or CUDA (AMP)
* ``metrics``   Dice, IoU, HD95 (mm), the four FCN scores, vertebra recognition; CSV + Markdown reports
* ``package``   model packages: safetensors weights + model card JSON, checked on loading
* ``reader``    DICOM CR/DX/DR, PNG/JPEG/TIFF, NRRD/NIfTI radiographs
* ``inference`` resample, sliding window, TTA, back to the input grid, areas in mm^2; writes NRRD/.seg.nrrd/PNG

Quick start::

    from XraySegInferLib.inference import Predictor
    predictor = Predictor.from_package("Resources/Models/chest")
    result = predictor.predict_file("chest.dcm")     # result.masks (C, H, W), result.label_image, result.areas_mm2
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
