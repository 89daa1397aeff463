"""Procedural inspection images with local defects: an imitation of the MVTec AD benchmark.

MVTec AD (Bergmann et al. 2019) is the usual yardstick for unsupervised visual inspection:
train on good parts only, then find and localise scratches, holes, stains and the like. It is
a download under a non-commercial licence, so tests and benchmarks here use this imitation
instead: four textures (fabric, wood, metal, tiles) and two objects (washer, pill), each drawn
from band-limited noise and simple geometry with the normal variation a real line shows
(texture scale and orientation, lighting, sensor noise, pose jitter), and defects that are
small, varied in size and partly low-contrast, with a pixel mask of where each one is.

Everything is seeded: image ``i`` of a call comes from its own generator,
``default_rng([seed, stream, category, i])``, so the same arguments give the same bytes, and a
longer call starts with the images of a shorter one. A defective image is a good image of its
own stream with the defect painted in before lighting and sensor noise, as a camera would see it.
"""

from trainer.inspection.sets import (
    CATEGORIES,
    DEFECTS,
    MASK_THRESHOLD,
    SIZES,
    Category,
    InspectionDataError,
    InspectionSet,
    defective,
    good,
    make_split,
    write_folder,
)

__all__ = [
    "CATEGORIES",
    "DEFECTS",
    "MASK_THRESHOLD",
    "SIZES",
    "Category",
    "InspectionDataError",
    "InspectionSet",
    "defective",
    "good",
    "make_split",
    "write_folder",
]
